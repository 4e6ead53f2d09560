"""The out-of-core cases of ``scale_cpu.py``: training from a backed ``.h5ad``, a backed ``.h5mu``
(RNA + protein) and a Zarr store against the same cells in memory, at the same batch size.

Each case runs in its own subprocess (its peak RSS is its own) and reports the first epoch and the later
ones separately (the first read of a file is the one prefetching is for), the peak RSS, and the ELBO of
held-out cells grown from the same source with another seed, after the same epochs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 1024
EPOCHS = 2
#: Seeds: the stores' cells (also grown in memory for the in-memory reference) and the held-out cells.
SEED, HELDOUT_SEED, N_HELDOUT = 2, 7, 5000
#: One cell_type-free spec for the grown CITE-seq data (``nbmixture`` for protein, as in the tutorials).
CITE_MODALITIES = {"rna": {}, "prot": {"likelihood": "nbmixture"}}


def _open(store: str, path: str | None, n_cells: int) -> Any:
    import anndata as ad
    import mudata as md
    from _scale_stores import grow_cite, grow_rna

    from scamort.scale import open_zarr

    if store == "memory_rna":
        return grow_rna(n_cells, SEED)
    if store == "memory_cite":
        return grow_cite(n_cells, SEED)
    assert path is not None
    if store == "h5ad":
        return ad.read_h5ad(path, backed="r")
    if store == "zarr":
        return open_zarr(path)
    return md.read_h5mu(path, backed=True)


def _heldout(store: str) -> Any:
    from _scale_stores import grow_cite, grow_rna

    return (
        grow_cite(N_HELDOUT, HELDOUT_SEED)
        if "cite" in store or store == "h5mu"
        else grow_rna(N_HELDOUT, HELDOUT_SEED)
    )


def _time_reads() -> list[tuple[float, float]]:
    """Record (start, seconds) of every pool read from disk from now on, in this process."""
    from scamort.data.backed import BackedCellData

    reads: list[tuple[float, float]] = []
    take = BackedCellData.take

    def timed(self: BackedCellData, index: Any) -> Any:
        started = time.perf_counter()
        pool = take(self, index)
        reads.append((started, time.perf_counter() - started))
        return pool

    BackedCellData.take = timed  # type: ignore[method-assign]
    return reads


def case_store(
    store: str, n_cells: int, path: str | None = None, prefetch: int | None = None
) -> dict[str, Any]:
    """Train on ``store`` (``memory_rna``, ``memory_cite``, ``h5ad``, ``zarr`` or ``h5mu``), reading
    ``prefetch`` pools ahead (None: scamort's default for this machine)."""
    from _common import current_rss_mb, peak_rss_mb, reset_peak_rss, warm_up_torch

    import scamort

    held_out = _heldout(store)
    warm_up_torch()
    before_open_mb = current_rss_mb()
    reset_peak_rss()
    started = time.perf_counter()
    data = _open(store, path, n_cells)
    opened_seconds = time.perf_counter() - started
    opened_mb = current_rss_mb()  # the user's object: what opening it (or growing it in memory) holds
    cite = "cite" in store or store == "h5mu"
    modalities = {k: scamort.Modality(**v) for k, v in CITE_MODALITIES.items()} if cite else None
    model = scamort.Model(data, modalities=modalities)
    setup_seconds = time.perf_counter() - started - opened_seconds
    if prefetch is not None:  # the comparison with a fixed setting reaches in
        model._data = model._data.rechunked(model._data.chunk_size, prefetch=prefetch)
    reads = _time_reads()
    train_started = time.perf_counter()
    history = model.train(max_epochs=EPOCHS, batch_size=BATCH, early_stopping=False, progress_bar=False)
    seconds = history["seconds"].to_numpy()
    # seconds spent reading pools (on the prefetch thread, if any), by the epoch they started in
    ends = np.cumsum(seconds)
    read_seconds = np.zeros(len(seconds))
    for began, took in reads:
        read_seconds[min(int(np.searchsorted(ends, began - train_started)), len(seconds) - 1)] += took
    n_train = len(model.train_indices)
    heldout_elbo = model.get_elbo(held_out)
    peak = peak_rss_mb()  # after the held-out query too
    return {
        "tool": "scamort",
        "store": store,
        "out_of_core": not store.startswith("memory"),
        "prefetch": None if store.startswith("memory") else _effective_prefetch(prefetch),
        "n_cells": n_cells,
        "batch_size": BATCH,
        "epochs_run": len(history),
        "open_seconds": opened_seconds,
        "setup_seconds": setup_seconds,
        "epoch_seconds": seconds.tolist(),
        "first_epoch_cells_per_second": n_train / seconds[0],
        "later_epochs_cells_per_second": n_train / float(np.median(seconds[1:])),
        "cells_per_second": n_train * len(seconds) / float(seconds.sum()),
        "read_seconds_per_epoch": read_seconds.tolist() if reads else None,
        "heldout_elbo": heldout_elbo,
        "peak_rss_mb": peak,
        "rss_before_open_mb": before_open_mb,
        "opened_object_mb": opened_mb - before_open_mb,
        "peak_above_opened_mb": peak - opened_mb,
        "file_mb": None if path is None else _size_mb(Path(path)),
    }


def _effective_prefetch(prefetch: int | None) -> int:
    import torch

    from scamort.data.backed import default_prefetch

    return default_prefetch(torch.device("cpu")) if prefetch is None else prefetch


def case_interleaved(
    store: str, n_cells: int, path: str, rounds: int = 3, prefetch: tuple[int | None, ...] = (None,)
) -> dict[str, Any]:
    """Throughput of ``store`` against the same cells in memory in one process, one epoch of each in
    turn (round 1 is each one's first epoch), so that a loaded machine's drifting speed cancels in each
    round's ratio. Each ``prefetch`` setting is one model read from ``store`` (``disk_prefetch_P``; None:
    scamort's default for this machine, ``disk_default``), taking its turn in every round."""
    from _common import warm_up_torch

    import scamort

    cite = store == "h5mu"
    modalities = {k: scamort.Modality(**v) for k, v in CITE_MODALITIES.items()} if cite else None
    warm_up_torch()
    models = {
        "memory": scamort.Model(
            _open("memory_cite" if cite else "memory_rna", None, n_cells), modalities=modalities
        )
    }
    for setting in prefetch:
        model = scamort.Model(_open(store, path, n_cells), modalities=modalities)
        model._data = model._data.rechunked(model._data.chunk_size, prefetch=setting)
        models["disk_default" if setting is None else f"disk_prefetch_{setting}"] = model
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            started = time.perf_counter()
            model.train(max_epochs=1, batch_size=BATCH, early_stopping=False, progress_bar=False)
            seconds[name].append(time.perf_counter() - started)
    out: dict[str, Any] = {
        "tool": "scamort",
        "interleaved": store,
        "n_cells": n_cells,
        "batch_size": BATCH,
        "prefetch_settings": [_effective_prefetch(p) for p in prefetch],
        "train_call_seconds": seconds,
    }
    for name in models:
        if name == "memory":
            continue
        ratios = [m / d for m, d in zip(seconds["memory"], seconds[name], strict=True)]
        suffix = "" if len(prefetch) == 1 else f"_{name}"
        out[f"speed_ratio_per_round{suffix}"] = ratios
        out[f"first_epoch_ratio{suffix}"] = ratios[0]
        out[f"later_epochs_ratio{suffix}"] = float(np.median(ratios[1:]))
    return out


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def cases(quick: bool, workdir: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """The out-of-core cases: every store at two sizes, and in memory at the same batch size."""
    small, large = (20_000, 100_000) if quick else (200_000, 1_000_000)
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    # in-memory CITE-seq at the large size would need about 10 GB (455 nonzeros per cell): compared at
    # the small size, where the throughput ratio is taken
    out[f"memory_rna_{large}"] = ("store", {"store": "memory_rna", "n_cells": large})
    for n in (small, large):
        out[f"h5ad_{n}"] = ("store", {"store": "h5ad", "n_cells": n, "path": str(workdir / f"rna_{n}.h5ad")})
    out[f"h5ad_{large}_no_prefetch"] = (
        "store",
        {"store": "h5ad", "n_cells": large, "path": str(workdir / f"rna_{large}.h5ad"), "prefetch": 0},
    )
    for n in (small, large):
        out[f"zarr_{n}"] = ("store", {"store": "zarr", "n_cells": n, "path": str(workdir / f"rna_{n}.zarr")})
    out[f"memory_cite_{small}"] = ("store", {"store": "memory_cite", "n_cells": small})
    for n in (small, large):
        out[f"h5mu_{n}"] = ("store", {"store": "h5mu", "n_cells": n, "path": str(workdir / f"cite_{n}.h5mu")})
    for store, path in (
        ("h5ad", f"rna_{small}.h5ad"),
        ("zarr", f"rna_{small}.zarr"),
        ("h5mu", f"cite_{small}.h5mu"),
    ):
        out[f"interleaved_{store}_{small}"] = (
            "interleaved",
            {"store": store, "n_cells": small, "path": str(workdir / path)},
        )
    # at the large size, with and without reading ahead (the in-memory CITE-seq reference is at the small
    # size only, see above)
    for store, n, path in (
        ("h5ad", large, f"rna_{large}.h5ad"),
        ("zarr", large, f"rna_{large}.zarr"),
        ("h5mu", small, f"cite_{small}.h5mu"),
    ):
        out[f"interleaved_{store}_{n}_prefetch_1_0"] = (
            "interleaved",
            {"store": store, "n_cells": n, "path": str(workdir / path), "prefetch": [1, 0]},
        )
        out[f"interleaved_{store}_{n}_5_rounds"] = (
            "interleaved",
            {"store": store, "n_cells": n, "path": str(workdir / path), "rounds": 5},
        )
    return out


def prepare(selected: dict[str, tuple[str, dict[str, Any]]]) -> None:
    """Write the stores the selected cases read (each once)."""
    from _scale_stores import grow_cite_to_h5mu, write_rna

    for kind, kwargs in selected.values():
        path = Path(kwargs.get("path") or "")
        if kind not in ("store", "interleaved") or kwargs["store"].startswith("memory") or path.exists():
            continue
        if kwargs["store"] == "h5mu":
            grow_cite_to_h5mu(kwargs["n_cells"], path, SEED)
        else:
            write_rna(kwargs["n_cells"], path.parent, SEED)


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Per store: throughput against in memory (first epoch, later epochs), peak RSS large/small, and
    the held-out ELBO's relative difference from in memory."""
    out: dict[str, Any] = {}
    runs = {k: v for k, v in results.items() if isinstance(v, dict) and "store" in v}
    sizes = sorted({v["n_cells"] for v in runs.values()})
    for name, run in runs.items():
        if not run["out_of_core"]:
            continue
        reference = next(
            (
                v
                for v in runs.values()
                if v["store"] == ("memory_cite" if run["store"] == "h5mu" else "memory_rna")
                and v["n_cells"] == run["n_cells"]
            ),
            None,
        )
        entry: dict[str, Any] = {}
        if reference is not None:
            entry["first_epoch_ratio"] = (
                run["first_epoch_cells_per_second"] / reference["first_epoch_cells_per_second"]
            )
            entry["later_epochs_ratio"] = (
                run["later_epochs_cells_per_second"] / reference["later_epochs_cells_per_second"]
            )
            entry["heldout_elbo_relative_difference"] = (
                run["heldout_elbo"] - reference["heldout_elbo"]
            ) / abs(reference["heldout_elbo"])
        if len(sizes) > 1 and run["n_cells"] == sizes[-1]:
            small = runs.get(name.replace(str(sizes[-1]), str(sizes[0])))
            if small is not None:
                entry["peak_rss_large_over_small"] = run["peak_rss_mb"] / small["peak_rss_mb"]
                if "opened_object_mb" in run and "opened_object_mb" in small:
                    # bytes per extra cell: of the peak, of the user's opened object, and scamort's own
                    extra_cells = run["n_cells"] - small["n_cells"]
                    grown = {
                        "peak": run["peak_rss_mb"] - small["peak_rss_mb"],
                        "opened_object": run["opened_object_mb"] - small["opened_object_mb"],
                    }
                    grown["scamort"] = grown["peak"] - grown["opened_object"]
                    for part, mb in grown.items():
                        entry[f"{part}_bytes_per_extra_cell"] = mb * 2**20 / extra_cells
        out[name] = entry
    for name, run in results.items():
        if isinstance(run, dict) and "interleaved" in run:
            out[name] = {k: v for k, v in run.items() if "ratio" in k}
    return out
