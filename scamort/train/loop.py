"""The training loop: plain torch, AdamW, KL warm-up, validation split, early stopping, history."""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel

from scamort.data.backed import EncodedCells
from scamort.errors import InputError
from scamort.module import VAE
from scamort.train.allocator import keep_freed_memory_for_reuse
from scamort.train.checkpoint import load_checkpoint, run_fingerprint, save_checkpoint
from scamort.train.config import TrainConfig
from scamort.train.distributed import all_reduce_mean, init_from_environment, rank_and_world_size, shard
from scamort.train.optimizer import build_optimizer

__all__ = ["NonFiniteLossError", "TrainingResult", "fit", "split_cells"]

logger = logging.getLogger(__name__)


def _progress_bar_class() -> type:
    """``tqdm.auto.tqdm``, imported on first use rather than with the package.

    In Jupyter without ipywidgets, importing ``tqdm.auto`` warns "IProgress not found" and falls back to the
    plain text bar; that fallback is fine, so the warning is silenced instead of reaching every notebook that
    imports scamort.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        from tqdm.auto import tqdm

    return tqdm


HISTORY_COLUMNS = (
    "epoch",
    "kl_weight",
    "train_loss",
    "train_elbo",
    "train_reconstruction",
    "train_kl",
    "validation_elbo",
    "validation_reconstruction",
    "validation_kl",
    "seconds",
)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the model keeps its last good weights."""


@dataclass(frozen=True)
class TrainingResult:
    """What :func:`fit` returns: the per-epoch history and the cells of each split."""

    history: pd.DataFrame
    train_indices: np.ndarray
    validation_indices: np.ndarray


def split_cells(n_cells: int, train_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split into training and validation positions (each sorted)."""
    n_validation = round((1 - train_size) * n_cells)
    if train_size < 1 and n_validation == 0:
        raise InputError(
            f"train_size={train_size} leaves no validation cell out of {n_cells}; use more cells or "
            "train_size=1.0 (no validation, no early stopping)."
        )
    if n_cells - n_validation < 1:
        raise InputError(f"train_size={train_size} leaves no training cell out of {n_cells}.")
    order = np.random.default_rng(seed).permutation(n_cells)
    return np.sort(order[n_validation:]), np.sort(order[:n_validation])


class _Totals:
    """Running per-cell sums of ELBO terms, kept on the device (no host sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(4, device=device)  # loss, elbo, reconstruction, kl
        self.n_cells = 0

    def add(self, loss: torch.Tensor, reconstruction: torch.Tensor, kl: torch.Tensor) -> None:
        self.sums += torch.stack(
            [
                loss * reconstruction.shape[0],
                (reconstruction - kl).sum(),
                reconstruction.sum(),
                kl.sum(),
            ]
        ).detach()
        self.n_cells += reconstruction.shape[0]

    def means(self) -> list[float]:
        return (self.sums / max(self.n_cells, 1)).tolist()


@torch.no_grad()
def _evaluate(module: VAE, data: EncodedCells, index: torch.Tensor, batch_size: int) -> list[float]:
    module.eval()
    totals = _Totals(data.device)
    for batch in data.iterate(index, batch_size):
        terms = module.loss_terms(batch)
        totals.add(torch.zeros((), device=data.device), terms.total_reconstruction, terms.kl)
    module.train()
    return totals.means()[1:]


@dataclass
class _Progress:
    """The mutable state of a run; what a checkpoint stores besides weights and RNG states."""

    epoch: int = 0
    step: int = 0
    rows: list[dict] = field(default_factory=list)
    best_elbo: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    epochs_since_best: int = 0


def _history_row(epoch: int, kl_weight: float, train: list[float], validation: list[float], seconds: float):
    return dict(zip(HISTORY_COLUMNS, [epoch, kl_weight, *train, *validation, seconds], strict=True))


def fit(
    module: VAE,
    data: EncodedCells,
    config: TrainConfig,
    *,
    device: torch.device,
    progress_bar: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1,
    modalities: Sequence[str] | None = None,
) -> TrainingResult:
    """Train ``module`` on ``data`` in place.

    Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is joined and each rank trains on its
    shard with DistributedDataParallel; the result is one model, identical on every rank.

    Parameters
    ----------
    module
        The VAE; moved to ``device`` and left there.
    data
        All cells (training and validation); copied to ``device`` once.
    config
        Training options.
    device
        Where to train.
    progress_bar
        Show a tqdm bar over epochs with the current ELBOs (on rank 0 only).
    checkpoint_dir
        Save a checkpoint there every ``checkpoint_every`` epochs (atomically); if it already holds one
        from the same options, resume from it. On CPU a resumed run ends with the same weights as an
        uninterrupted one.
    modalities
        Train on these modalities only (default all): every other modality counts as unmeasured in
        every cell, and cells measured in none of these are left out of both splits (which are
        otherwise the same as with all modalities).

    Returns
    -------
    The history (one row per epoch, columns ``HISTORY_COLUMNS``) and the split.

    Raises
    ------
    NonFiniteLossError
        If an epoch produced a non-finite loss; the module then holds the weights from before it.
    """
    train_np, validation_np = split_cells(data.n_cells, config.train_size, config.seed)
    if modalities is not None:
        data = data.restricted_to(modalities)
        measured = np.logical_or.reduce([data.modalities[name].present.cpu().numpy() for name in modalities])
        train_np, validation_np = train_np[measured[train_np]], validation_np[measured[validation_np]]
        if len(train_np) == 0:
            raise InputError(f"No training cell is measured in {', '.join(map(repr, modalities))}.")
    keep_freed_memory_for_reuse()
    torch.manual_seed(config.seed)
    init_from_environment(device)
    rank, world_size = rank_and_world_size()
    data = data.to(device)
    module.to(device).train()
    # With several modalities the presence-pattern classifier gets no gradient in a minibatch of one
    # pattern, which can happen on one rank and not on another; DDP must then look for such weights.
    trainer = (
        DistributedDataParallel(module, find_unused_parameters=len(module.modality_names) > 1)
        if world_size > 1
        else module
    )
    train_index = torch.as_tensor(train_np, device=device)
    validation_index = torch.as_tensor(validation_np, device=device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    optimizer = build_optimizer(module, config)
    progress = _Progress()
    fingerprint = run_fingerprint(module, data) if checkpoint_dir is not None else None
    saved = None
    if checkpoint_dir is not None and fingerprint is not None:
        saved = load_checkpoint(checkpoint_dir, config, fingerprint, module)
    if saved is not None:
        module.load_state_dict(saved["module"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        generator.set_state(saved["generator"])
        progress = _Progress(**saved["progress"])
        logger.info("resuming from epoch %d", progress.epoch)

    steps_per_epoch = math.ceil((len(train_np) // world_size) / config.batch_size)  # per rank
    warmup_steps = config.kl_warmup_epochs * steps_per_epoch
    stopped_early = saved is not None and saved["stopped"]
    epochs = _progress_bar_class()(
        range(progress.epoch, config.max_epochs if not stopped_early else progress.epoch),
        desc="training",
        unit="epoch",
        disable=not progress_bar or rank != 0,
        leave=False,
        initial=progress.epoch,
        total=config.max_epochs,
    )
    run_started = time.perf_counter()
    for epoch in epochs:
        started = time.perf_counter()
        last_good = copy.deepcopy(module.state_dict())
        totals = _Totals(device)
        order = data.epoch_order(train_index, generator)
        for batch in data.iterate(shard(order, rank, world_size), config.batch_size):
            kl_weight = min(1.0, progress.step / warmup_steps) if warmup_steps else 1.0
            terms = trainer(batch)
            loss = -terms.elbo(kl_weight).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals.add(loss, terms.total_reconstruction, terms.kl)
            progress.step += 1
        train = all_reduce_mean(totals.means(), device)
        has_validation = len(validation_np) >= world_size
        validation = (
            all_reduce_mean(
                _evaluate(
                    module, data, shard(validation_index, rank, world_size), config.validation_batch_size
                ),
                device,
            )
            if has_validation
            else [math.nan] * 3
        )
        # The losses are computed before each step, so the epoch's last step is judged by the
        # validation pass and the weights themselves; every snapshot kept is thereby known good.
        finite = math.isfinite(train[0]) and (not has_validation or math.isfinite(validation[0]))
        if not (finite and _finite_parameters(module)):
            module.load_state_dict(last_good)
            raise NonFiniteLossError(
                f"Epoch {epoch + 1} produced a non-finite loss or weights; the model keeps its weights "
                "from before that epoch. Check the data for extreme values or lower lr."
            )
        progress.rows.append(
            _history_row(epoch + 1, kl_weight, train, validation, time.perf_counter() - started)
        )
        progress.epoch = epoch + 1
        epochs.set_postfix(train_elbo=f"{train[1]:.1f}", validation_elbo=f"{validation[0]:.1f}")
        stop = _early_stopping_says_stop(progress, validation[0], module, config, warmup_steps)
        due = stop or progress.epoch % checkpoint_every == 0
        if checkpoint_dir is not None and rank == 0 and due:
            save_checkpoint(
                checkpoint_dir,
                {
                    "config": asdict(config),
                    "fingerprint": fingerprint,
                    "module": module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "generator": generator.get_state(),
                    "progress": asdict(progress),
                    "stopped": stop,
                },
            )
        if stop:
            logger.info("early stopping at epoch %d", epoch + 1)
            break
        if config.max_seconds is not None and time.perf_counter() - run_started > config.max_seconds:
            logger.info("time budget of %.0f s reached at epoch %d", config.max_seconds, epoch + 1)
            break
    if progress.best_state is not None:
        module.load_state_dict(progress.best_state)
    module.eval()
    history = pd.DataFrame(progress.rows, columns=HISTORY_COLUMNS)
    return TrainingResult(history, train_np, validation_np)


def _finite_parameters(module: torch.nn.Module) -> bool:
    """Whether every weight is finite (one host sync per epoch)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in module.parameters()]).all())


def _early_stopping_says_stop(
    progress: _Progress, validation_elbo: float, module: VAE, config: TrainConfig, warmup_steps: int
) -> bool:
    """Track the best validation ELBO (after warm-up) and its weights; True when patience runs out."""
    if not config.early_stopping or math.isnan(validation_elbo) or progress.step < warmup_steps:
        return False
    if validation_elbo > progress.best_elbo:
        progress.best_elbo, progress.epochs_since_best = validation_elbo, 0
        progress.best_state = copy.deepcopy(module.state_dict())
        return False
    progress.epochs_since_best += 1
    return progress.epochs_since_best >= config.early_stopping_patience
