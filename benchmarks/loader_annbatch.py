"""Minibatch loading from one Zarr store: annbatch's ``Loader`` against scamort's own out-of-core reader.

Both read the same store of grown worm RNA cells (``benchmarks/_scale_stores.py``: 2000 HVGs, CSR) and
deliver shuffled minibatches of ``--batch-size`` cells as torch tensors (annbatch: a torch sparse CSR
tensor per batch; scamort: the coordinate batches its model trains on), first epoch included (a fresh
loader per measurement). The two are measured alternately (A B A B ...) in one process, so that a busy
host slows both alike; the report quotes each round's ratio and the median ratio.

annbatch needs Python >= 3.12; run this with an environment that has torch, annbatch, anndata, zarr and
scamort (``pip install -e .``)::

    python benchmarks/loader_annbatch.py --cells 200000 1000000 --workdir /tmp/scale_stores
    python benchmarks/loader_annbatch.py --quick       # 20k cells, two rounds

The stores are made by ``benchmarks/scale_cpu.py`` (or ``_scale_stores.write_rna``) in ``--workdir``;
``--make-stores`` makes missing ones here (needs scanpy for the HVG selection). Writes
``benchmarks/results/loader_annbatch.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def annbatch_epoch(store: Path, batch_size: int, seed: int, max_cells: int | None) -> dict[str, float]:
    """Cells/s of one shuffled epoch through annbatch's ``Loader`` (its default chunking)."""
    import anndata as ad
    import zarr
    from annbatch import Loader

    started = time.perf_counter()
    matrix = ad.io.sparse_dataset(zarr.open_group(str(store), mode="r")["X"])
    loader = Loader(batch_size=batch_size, shuffle=True, to="torch", rng=np.random.default_rng(seed))
    loader.add_dataset(matrix)
    cells = entries = 0
    for output in loader:
        batch = output["X"]
        cells += int(batch.shape[0])
        entries += int(batch.values().shape[0]) if batch.layout == torch.sparse_csr else 0
        if max_cells is not None and cells >= max_cells:
            break
    seconds = time.perf_counter() - started
    return {"cells": cells, "entries": entries, "seconds": seconds, "cells_per_second": cells / seconds}


def scamort_epoch(store: Path, batch_size: int, seed: int, max_cells: int | None) -> dict[str, float]:
    """Cells/s of one shuffled epoch through scamort's out-of-core reader (as ``Model.train`` reads)."""
    import scamort
    from scamort.scale import open_zarr

    started = time.perf_counter()
    data = scamort.Model(open_zarr(store))._data  # validation pass over the store included
    generator = torch.Generator().manual_seed(seed)
    order = data.epoch_order(torch.arange(data.n_cells), generator)
    cells = entries = 0
    for batch in data.iterate(order, batch_size):
        cells += batch.size
        entries += int(batch.modalities["rna"].counts.values.shape[0])
        if max_cells is not None and cells >= max_cells:
            break
    seconds = time.perf_counter() - started
    return {"cells": cells, "entries": entries, "seconds": seconds, "cells_per_second": cells / seconds}


def compare(store: Path, rounds: int, batch_size: int, max_cells: int | None) -> dict[str, Any]:
    """``rounds`` alternating measurements (annbatch, then scamort) and their ratios."""
    runs: dict[str, list[dict[str, float]]] = {"annbatch": [], "scamort": []}
    for i in range(rounds):
        runs["annbatch"].append(annbatch_epoch(store, batch_size, seed=i, max_cells=max_cells))
        runs["scamort"].append(scamort_epoch(store, batch_size, seed=i, max_cells=max_cells))
        print(f"  round {i}: {runs['annbatch'][-1]} | {runs['scamort'][-1]}", flush=True)
    ratios = [
        a["cells_per_second"] / s["cells_per_second"]
        for a, s in zip(runs["annbatch"], runs["scamort"], strict=True)
    ]
    return {"runs": runs, "annbatch_over_scamort": ratios, "median_ratio": statistics.median(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", type=int, nargs="*", default=[200_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/scale_stores"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--max-cells", type=int, default=None, help="stop each epoch after this many cells")
    parser.add_argument("--quick", action="store_true", help="20k cells, two rounds")
    parser.add_argument("--make-stores", action="store_true", help="write missing stores (needs scanpy)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cells = [20_000] if args.quick else args.cells
    results: dict[str, Any] = {}
    for n_cells in cells:
        store = args.workdir / f"rna_{n_cells}.zarr"
        if not store.exists() and args.make_stores:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from _scale_stores import write_rna

            args.workdir.mkdir(parents=True, exist_ok=True)
            write_rna(n_cells, args.workdir, seed=1)
        print(f"{store} ...", flush=True)
        results[f"rna_{n_cells}"] = compare(store, args.rounds, args.batch_size, args.max_cells)
    packages = {name: metadata.version(name) for name in ("annbatch", "anndata", "zarr", "torch", "scamort")}
    record = {
        "environment": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "packages": packages,
        },
        "batch_size": args.batch_size,
        "max_cells": args.max_cells,
        "cases": results,
    }
    out = args.out or RESULTS / ("loader_annbatch_quick.json" if args.quick else "loader_annbatch.json")
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
