"""scamort on one CUDA GPU: throughput at 1M cells, held-out ELBO under a time budget against scvi-tools'
SCVI on the same GPU, time to reach SCVI's final held-out ELBO, peak device memory, GPU utilisation.

Data: 1M cells × 2000 genes grown from the bundled worm neurons (2000 HVGs; bootstrap of cells with
binomial thinning, :func:`scamort.scale.grow`), as in ``benchmarks/scale_cpu.py``.

1. Throughput at batch 128, 1024 and 4096: the whole CSR on the device (``CellData.to``), each epoch's
   order drawn there and its minibatches gathered there (``CellData.iterate``), the training step of
   ``scamort.train.fit`` (forward, ELBO, backward, fused AdamW). Warm-up steps are excluded; the timed
   window is closed by ``torch.cuda.synchronize()``. Peak device memory per batch size.
2. Held-out ELBO after the same wall-clock budget: scamort (``Model.train(batch_size=1024,
   max_seconds=...)``) and SCVI (its defaults, batch 128, except ``max_epochs`` large, Lightning's
   ``max_time`` and ``train_size=1.0``). Both train on the same 90% of the cells and are scored on the
   same held-out 10% (scamort's own validation split, which SCVI never sees); neither warms the KL weight
   up (each default warm-up, 400 epochs for SCVI, a quarter of ``max_epochs`` for scamort, outlasts the
   budget, so both would be scored at a KL weight never reached in training).
3. Time for scamort to reach SCVI's final held-out ELBO: scamort's held-out ELBO after every epoch,
   against the seconds since its ``train()`` call began; compared with SCVI's training time.
4. GPU utilisation sampled every 0.2 s (``pynvml``, else ``nvidia-smi``) during the throughput windows
   and the scamort budget run.

    python benchmarks/gpu.py             # on a CUDA machine, about 6 minutes; writes results/gpu.json
    python benchmarks/gpu.py --dry-run   # tiny sizes on the CPU (tests); writes results/gpu_dry_run.json
"""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment_info, quiet_scvi, warm_up_torch, write_json
from scale_cpu import _grown

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_SIZES = (128, 1024, 4096)
#: Goals of issue 20: training cells per second at 1M cells (batch >= 1024) and scamort's time to
#: SCVI's final held-out ELBO as a fraction of SCVI's time.
GOAL_CELLS_PER_SECOND = 500_000
GOAL_TIME_FRACTION = 0.1


@dataclass(frozen=True)
class Sizes:
    """What one run does: cells, seconds per throughput window and of each tool's budget."""

    n_cells: int
    warmup_steps: int
    throughput_seconds: float
    budget_seconds: float
    scamort_batch_size: int = 1024


FULL = Sizes(n_cells=1_000_000, warmup_steps=30, throughput_seconds=10.0, budget_seconds=100.0)
DRY_RUN = Sizes(
    n_cells=3000, warmup_steps=2, throughput_seconds=0.3, budget_seconds=2.0, scamort_batch_size=256
)


# ------------------------------------------------------------------------------------------ measuring
def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak of device memory (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak device memory allocated by torch since the last reset, MiB (None off CUDA)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


class UtilisationSampler:
    """GPU utilisation (percent busy) sampled in a thread, through pynvml or ``nvidia-smi``.

    Use as a context manager; afterwards ``summary()`` holds the mean, median and the number of samples,
    or None values with the reason nothing could be sampled.
    """

    def __init__(self, device: torch.device, interval: float = 0.2) -> None:
        self.device, self.interval = device, interval
        self.samples: list[float] = []
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read = self._reader()

    def _reader(self):
        if self.device.type != "cuda":
            self.reason = f"no CUDA device (ran on {self.device.type})"
            return None
        index = self.device.index or 0
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            pass
        if shutil.which("nvidia-smi") is None:
            self.reason = "neither pynvml nor nvidia-smi is available"
            return None
        command = [
            "nvidia-smi",
            f"--id={index}",
            "--query-gpu=utilization.gpu",
            "--format=csv,noheader,nounits",
        ]
        return lambda: float(
            subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[0]
        )

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(self._read())
            except Exception as err:
                self.reason = f"sampling failed: {err!r}"
                return

    def __enter__(self) -> UtilisationSampler:
        if self._read is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        """``{"mean_percent", "median_percent", "n_samples", "reason"}`` (None where not sampled)."""
        if not self.samples:
            return {
                "mean_percent": None,
                "median_percent": None,
                "n_samples": 0,
                "reason": self.reason or "no sample",
            }
        return {
            "mean_percent": float(np.mean(self.samples)),
            "median_percent": float(np.median(self.samples)),
            "n_samples": len(self.samples),
            "reason": self.reason,
        }


def training_throughput(
    module: torch.nn.Module,
    data: Any,
    train_index: torch.Tensor,
    batch_size: int,
    *,
    warmup_steps: int,
    seconds: float,
    lr: float = 1e-3,
) -> dict[str, Any]:
    """Training cells per second of ``module`` on ``data`` (a ``CellData`` already on the device).

    The step is ``scamort.train.fit``'s: epochs in a random order drawn on the device, minibatches
    gathered there, forward, ELBO at KL weight 1, backward, fused AdamW. ``warmup_steps`` steps run
    first, untimed; then steps run until ``seconds`` have passed, and the window ends with a device sync.

    Returns
    -------
    dict
        ``cells_per_second``, ``steps``, ``seconds`` (timed), ``batch_size``, ``peak_device_memory_mb``.
    """
    device = data.device
    module.to(device).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, fused=True)
    generator = torch.Generator(device=device).manual_seed(0)

    def batches():
        while True:
            yield from data.iterate(data.epoch_order(train_index, generator), batch_size)

    def step(batch: Any) -> None:
        loss = -module(batch).elbo(1.0).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    stream = batches()
    for _ in range(warmup_steps):
        step(next(stream))
    synchronize(device)
    reset_peak_memory(device)
    steps, cells = 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = next(stream)
        step(batch)
        steps, cells = steps + 1, cells + batch.size
    synchronize(device)
    elapsed = time.perf_counter() - started
    return {
        "batch_size": batch_size,
        "steps": steps,
        "seconds": elapsed,
        "cells_per_second": cells / elapsed,
        "peak_device_memory_mb": peak_memory_mb(device),
    }


def time_to_reach(seconds: np.ndarray, elbo: np.ndarray, target: float) -> float | None:
    """The first time in ``seconds`` (increasing) at which ``elbo`` is at least ``target`` (None: never)."""
    reached = np.flatnonzero(np.asarray(elbo) >= target)
    return float(np.asarray(seconds)[reached[0]]) if reached.size else None


def goals(throughput: dict[str, Any], ratio: float | None, n_cells: int) -> dict[str, Any]:
    """Whether the issue's goals are met (None where not measured at 1M cells)."""
    large = [r["cells_per_second"] for b, r in throughput.items() if int(b) >= 1024]
    at_scale = n_cells >= 1_000_000
    best = max(large) if large else None
    return {
        "cells_per_second_goal": GOAL_CELLS_PER_SECOND,
        "best_cells_per_second_batch_1024_or_more": best,
        "cells_per_second_met": (best >= GOAL_CELLS_PER_SECOND) if (at_scale and best is not None) else None,
        "time_fraction_goal": GOAL_TIME_FRACTION,
        "time_fraction": ratio,
        "time_fraction_met": (ratio is not None and ratio <= GOAL_TIME_FRACTION) if at_scale else None,
    }


# ------------------------------------------------------------------------------------------ the cases
def run_throughput(adata: Any, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Throughput per batch size on the device-resident data of ``Model(adata)``."""
    import scamort
    from scamort.train.loop import split_cells

    model = scamort.Model(adata)
    data = model._data.to(device)  # the whole CSR on the device, once
    train_np, _ = split_cells(data.n_cells, 0.9, 0)
    train_index = torch.as_tensor(train_np, device=device)
    out: dict[str, Any] = {"device_data_mb": _tensor_mb(data)}
    for batch_size in BATCH_SIZES:
        with UtilisationSampler(device) as sampler:
            result = training_throughput(
                copy.deepcopy(model.module),
                data,
                train_index,
                batch_size,
                warmup_steps=sizes.warmup_steps,
                seconds=sizes.throughput_seconds,
            )
        out[str(batch_size)] = {**result, "gpu_utilisation": sampler.summary()}
        print(f"  throughput batch {batch_size}: {result['cells_per_second']:,.0f} cells/s", flush=True)
    return out


def _tensor_mb(data: Any) -> float:
    tensors = [data.batch_index, data.categorical, data.continuous]
    for m in data.modalities.values():
        tensors += [m.indptr, m.indices, m.values, m.log_library, m.log_factorial, m.present]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def run_scamort_budget(adata: Any, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """scamort for ``budget_seconds``: held-out ELBO after each epoch, and at the end."""
    import scamort

    model = scamort.Model(adata)
    reset_peak_memory(device)
    with UtilisationSampler(device) as sampler:
        started = time.perf_counter()
        history = model.train(
            max_epochs=100_000,
            batch_size=sizes.scamort_batch_size,
            early_stopping=False,
            kl_warmup_epochs=0,
            max_seconds=sizes.budget_seconds,
            progress_bar=False,
            device=str(device),
        )
        synchronize(device)
        seconds = time.perf_counter() - started
    # the epochs' own clocks, shifted so that the sum ends at the call's end (setup counted up front)
    ends = np.cumsum(history["seconds"].to_numpy())
    ends += seconds - ends[-1]
    return {
        "tool": "scamort",
        "batch_size": sizes.scamort_batch_size,
        "epochs_run": len(history),
        "train_seconds": seconds,
        "heldout_elbo": float(model.get_elbo(indices=model.validation_indices)),
        "heldout_elbo_per_epoch": history["validation_elbo"].tolist(),
        "seconds_at_epoch_end": ends.tolist(),
        "peak_device_memory_mb": peak_memory_mb(device),
        "gpu_utilisation": sampler.summary(),
        "validation_indices": model.validation_indices,
    }


def run_scvi_budget(adata: Any, heldout: np.ndarray, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """SCVI (defaults, same architecture) for ``budget_seconds`` on the other cells; held-out ELBO."""
    scvi = quiet_scvi(0)
    train = adata[np.setdiff1d(np.arange(adata.n_obs), heldout)].copy()
    held_out = adata[heldout].copy()
    scvi.model.SCVI.setup_anndata(train)
    model = scvi.model.SCVI(train, n_latent=10, n_hidden=128, n_layers=1, gene_likelihood="nb")
    reset_peak_memory(device)
    started = time.perf_counter()
    model.train(
        max_epochs=100_000,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else "auto",
        train_size=1.0,
        max_time={"seconds": sizes.budget_seconds},
        plan_kwargs={"n_epochs_kl_warmup": None, "n_steps_kl_warmup": None},
        enable_progress_bar=False,
    )
    synchronize(device)
    seconds = time.perf_counter() - started
    return {
        "tool": "scvi-tools",
        "batch_size": 128,
        "epochs_run": len(model.history["elbo_train"]),
        "train_seconds": seconds,
        "heldout_elbo": float(model.get_elbo(held_out)),  # scvi-tools 1.4.2 returns the ELBO itself
        "peak_device_memory_mb": peak_memory_mb(device),
    }


def run(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Everything, in order; returns the results file's content."""
    started = time.perf_counter()
    warm_up_torch()
    adata = _grown(sizes.n_cells)
    print(
        f"grown {adata.n_obs} cells × {adata.n_vars} genes in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    throughput = run_throughput(adata, sizes, device)
    ours = run_scamort_budget(adata, sizes, device)
    heldout = ours.pop("validation_indices")
    print(f"  scamort: {ours['epochs_run']} epochs, held-out ELBO {ours['heldout_elbo']:.2f}", flush=True)
    theirs = run_scvi_budget(adata, heldout, sizes, device)
    print(
        f"  scvi-tools: {theirs['epochs_run']} epochs, held-out ELBO {theirs['heldout_elbo']:.2f}", flush=True
    )
    reach = time_to_reach(
        np.asarray(ours["seconds_at_epoch_end"]),
        np.asarray(ours["heldout_elbo_per_epoch"]),
        theirs["heldout_elbo"],
    )
    ratio = None if reach is None else reach / theirs["train_seconds"]
    return {
        "benchmark": "gpu",
        "environment": environment_info(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "data": {
            "n_cells": adata.n_obs,
            "n_genes": adata.n_vars,
            "nnz": int(adata.X.nnz),
            "source": "worm, grown",
        },
        "sizes": sizes.__dict__,
        "throughput": throughput,
        "budget": {"scamort": ours, "scvi": theirs, "kl_warmup": "none for either tool"},
        "time_to_scvi_final_heldout_elbo": {
            "scamort_seconds": reach,
            "scvi_seconds": theirs["train_seconds"],
            "fraction": ratio,
        },
        "goals": goals({k: v for k, v in throughput.items() if k.isdigit()}, ratio, adata.n_obs),
        "total_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, on the CPU unless --device says")
    parser.add_argument("--device", default=None, help="default cuda (cpu with --dry-run)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU (or --dry-run to check it on the CPU).")
    payload = run(DRY_RUN if args.dry_run else FULL, device)
    default = "gpu_dry_run.json" if args.dry_run or device.type != "cuda" else "gpu.json"
    out = write_json(args.out or RESULTS / default, payload)
    print(f"wrote {out} after {payload['total_seconds']:.0f} s; goals: {payload['goals']}")


if __name__ == "__main__":
    main()
