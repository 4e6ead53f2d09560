"""Multi-process training on PyTorch's own engine: DistributedDataParallel launched by ``torchrun``.

Each rank trains on its shard of every epoch's shuffled training cells; DDP all-reduces the gradients,
so all ranks hold one and the same model. Metrics are averaged over ranks so that early stopping and
the history agree everywhere.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["all_reduce_mean", "init_from_environment", "rank_and_world_size", "shard"]


def init_from_environment(device: torch.device) -> None:
    """Join the process group that ``torchrun`` describes in the environment, if any and not yet joined.

    ``gloo`` on CPU, ``nccl`` on CUDA. Does nothing for a single process.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of an epoch's cell order, shape ``(len(order) // world_size,)``.

    Every rank gets the same number of cells (so all take the same number of steps); at most
    ``world_size - 1`` cells, different ones each epoch, sit the epoch out.
    """
    per_rank = order.shape[0] // world_size
    return order[rank * per_rank : (rank + 1) * per_rank]


def all_reduce_mean(values: list[float], device: torch.device) -> list[float]:
    """The mean of ``values`` over all ranks (identity for one process)."""
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / world_size).tolist()
