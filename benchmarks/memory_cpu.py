"""Peak host memory of in-memory training, against the size of the counts.

Two cases, each measured in its own fresh subprocess (so that its peak resident memory is its own):

* ``rna_1M``: 1M cells × 2000 genes grown from the bundled worm neurons (2000 HVGs; bootstrap of cells
  with binomial thinning, :func:`scamort.scale.grow`), counts in ``.X``;
* ``cite_200k``: 200k CITE-seq cells grown from the bundled BMMC set, RNA (1000 genes) in ``.X`` and
  134 proteins as a dense DataFrame in ``.obsm["protein_expression"]`` (as the bundled file stores them);
  each grown cell is one source cell's RNA and protein, thinned together.

The grown data are written to ``.h5ad`` first (cached in a temporary folder), so a case starts as a user
does: ``import scamort``, ``anndata.read_h5ad``, then ``Model(adata)``, one epoch of ``train()`` and
``get_latent_representation()``. Reported, in MiB and as multiples of ``data_mb``:

* ``data_mb``: the counts as CSR (float32 values + int32 column indices + row pointers), summed over
  modalities (the protein counted as the CSR of its nonzeros);
* ``peak_above_import_mb``: peak RSS from the moment the AnnData is read until the end, minus the RSS
  after ``import scamort`` (and a torch warm-up); it includes the user's AnnData itself;
* ``peak_above_loaded_mb``: the same peak minus the RSS once the AnnData is loaded (scamort's own
  share), and the peak after each stage (``Model``, ``train``, latent).

    python benchmarks/memory_cpu.py              # both cases (a few minutes on 2 cores)
    python benchmarks/memory_cpu.py --quick      # 100k / 20k cells
    python benchmarks/memory_cpu.py --compare-with /path/to/other/checkout   # alternate old/new code

Writes ``benchmarks/results/memory_cpu.json`` (``memory_cpu_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    current_rss_mb,
    environment_info,
    load_worm_neurons,
    peak_rss_mb,
    reset_peak_rss,
    select_hvg_counts,
    warm_up_torch,
    write_json,
)

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(tempfile.gettempdir()) / "scamort_memory_cpu"
PROTEIN_KEY = "protein_expression"
#: Cells per gradient step in the measured epoch by default (``--batch-size``): the working memory of a
#: step grows with it (a few dense cells × features arrays), so it is recorded with every result.
BATCH_SIZE = 1024


def csr_mb(n_rows: int, nnz: int) -> float:
    """MiB of a CSR matrix with float32 values, int32 column indices and int32 row pointers."""
    return (nnz * 8 + (n_rows + 1) * 4) / 2**20


def grow_rna(n_cells: int, path: Path) -> None:
    """1M-style RNA case: worm neurons (2000 HVGs) grown to ``n_cells``, written to ``path``."""
    import anndata as ad

    from scamort.scale import grow

    grown = grow(select_hvg_counts(load_worm_neurons()), n_cells, seed=1)
    lean = ad.AnnData(X=grown.X, obs=grown.obs[["label"]].astype("category"), var=grown.var)
    lean.write_h5ad(path)


def grow_cite(n_cells: int, path: Path) -> None:
    """CITE-seq case: the bundled BMMC RNA + 134 proteins grown together, written to ``path``."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    import scamort
    from scamort.scale import grow

    bundled = scamort.datasets.bmmc_cite()
    protein = bundled.obsm[PROTEIN_KEY]
    rna = sp.csr_matrix(bundled.layers["counts"], dtype=np.float32)
    joint = ad.AnnData(
        X=sp.hstack([rna, sp.csr_matrix(protein.to_numpy(dtype=np.float32))]).tocsr(),
        obs=bundled.obs[["cell_type", "batch"]].copy(),
        var=pd.DataFrame(index=[*map(str, bundled.var_names), *(f"protein:{c}" for c in protein.columns)]),
    )
    grown = grow(joint, n_cells, seed=1)
    n_genes = bundled.n_vars
    proteins = grown.X[:, n_genes:].toarray().astype(np.float64)  # dense, as the bundled file stores them
    out = ad.AnnData(
        X=grown.X[:, :n_genes].tocsr(),
        obs=grown.obs[["cell_type", "batch"]].astype("category"),
        var=pd.DataFrame(index=list(map(str, bundled.var_names))),
        obsm={PROTEIN_KEY: pd.DataFrame(proteins, index=grown.obs_names, columns=protein.columns)},
    )
    out.write_h5ad(path)


def _stage(record: dict[str, Any], name: str, loaded_mb: float) -> None:
    record[f"peak_after_{name}_above_loaded_mb"] = peak_rss_mb() - loaded_mb


def measure(path: str, kind: str, train: bool = True, batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    """One case, in this (fresh) process: the peaks of ``Model``, one epoch (unless not ``train``) and
    the latent."""
    import anndata as ad

    import scamort

    warm_up_torch()
    gc.collect()
    import_mb = current_rss_mb()
    adata = ad.read_h5ad(path)
    gc.collect()
    loaded_mb = current_rss_mb()
    n_cells = adata.n_obs
    data = csr_mb(n_cells, adata.X.nnz)
    modalities = None
    if kind == "cite":
        data += csr_mb(n_cells, int(np.count_nonzero(adata.obsm[PROTEIN_KEY].to_numpy())))
        modalities = {"rna": scamort.Modality(), "protein": scamort.Modality(obsm_key=PROTEIN_KEY)}
    reset_peak_rss()
    record: dict[str, Any] = {
        "n_cells": n_cells,
        "nnz_rna": int(adata.X.nnz),
        "data_mb": data,
        "batch_size": batch_size,
    }
    model = scamort.Model(adata, modalities=modalities)
    _stage(record, "model", loaded_mb)
    if train:
        started = time.perf_counter()
        history = model.train(max_epochs=1, batch_size=batch_size, early_stopping=False, progress_bar=False)
        seconds = time.perf_counter() - started
        _stage(record, "train", loaded_mb)
        record["epoch_seconds"] = float(history["seconds"].iloc[0])
        record["train_call_seconds"] = seconds
        record["train_cells_per_second"] = len(model.train_indices) / record["epoch_seconds"]
    latent = model.get_latent_representation()
    _stage(record, "latent", loaded_mb)
    peak = peak_rss_mb()
    return {
        **record,
        "import_rss_mb": import_mb,
        "loaded_rss_mb": loaded_mb,
        "anndata_mb": loaded_mb - import_mb,
        "peak_rss_mb": peak,
        "peak_above_import_mb": peak - import_mb,
        "peak_above_import_x_data": (peak - import_mb) / data,
        "peak_above_loaded_mb": peak - loaded_mb,
        "peak_above_loaded_x_data": (peak - loaded_mb) / data,
        "trained": train,
        "latent_shape": list(latent.shape),
    }


def _cases(quick: bool) -> dict[str, tuple[str, int]]:
    if quick:
        return {"rna_100k": ("rna", 100_000), "cite_20k": ("cite", 20_000)}
    return {"rna_1M": ("rna", 1_000_000), "cite_200k": ("cite", 200_000)}


def _prepare(kind: str, n_cells: int) -> Path:
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"{kind}_{n_cells}.h5ad"
    if not path.exists():
        partial = path.with_suffix(".partial.h5ad")
        (grow_rna if kind == "rna" else grow_cite)(n_cells, partial)
        partial.rename(path)
    return path


def _run(path: Path, kind: str, code: str | None, batch_size: int) -> dict[str, Any]:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = code
    done = subprocess.run(
        [sys.executable, __file__, "--measure", str(path), "--kind", kind, "--batch-size", str(batch_size)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if done.returncode != 0:
        print(done.stderr[-3000:], flush=True)
        return {"error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100k RNA cells and 20k CITE-seq cells")
    parser.add_argument(
        "--cases", nargs="*", help="run only these cases (rna_1M, cite_200k; rna_100k, cite_20k with --quick)"
    )
    parser.add_argument(
        "--compare-with", type=Path, default=None, help="another checkout: each case also runs its code"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="cells per step in the epoch")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one case in this process
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--skip-train", action="store_true", help=argparse.SUPPRESS)  # Model + latent only
    args = parser.parse_args()
    if args.measure:
        print(
            json.dumps(
                measure(args.measure, args.kind, train=not args.skip_train, batch_size=args.batch_size)
            )
        )
        return
    cases = _cases(args.quick)
    if args.cases:
        cases = {k: v for k, v in cases.items() if k in args.cases}
    here = str(Path(__file__).resolve().parent.parent)
    results: dict[str, Any] = {}
    for name, (kind, n_cells) in cases.items():
        path = _prepare(kind, n_cells)
        codes = (
            {"this": here} if args.compare_with is None else {"other": str(args.compare_with), "this": here}
        )
        for label, code in codes.items():
            key = name if args.compare_with is None else f"{name}_{label}"
            print(f"running {key} ...", flush=True)
            results[key] = _run(path, kind, code, args.batch_size)
            print(f"  {results[key]}", flush=True)
    out = args.out or RESULTS / ("memory_cpu_quick.json" if args.quick else "memory_cpu.json")
    write_json(out, {"environment": environment_info(), "batch_size": args.batch_size, "cases": results})


if __name__ == "__main__":
    main()
