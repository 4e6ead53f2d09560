"""Forward + backward time of the per-cell NB log-likelihood kernels before/after the float64
count-dependent terms (issue 18), interleaved in one process on worm-shaped minibatches.

    python benchmarks/count_precision_kernel.py --before /tmp/scamort_before

Loads ``scamort/nb_rows.py`` of both copies under different module names; minibatches of 128 cells
are drawn from the worm neurons (2000 HVGs) with their real sparsity. Writes
``benchmarks/results/count_precision_kernel.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import scanpy as sc

    import scamort

    adata = scamort.datasets.worm_neurons()
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=2000, subset=True)
    counts = torch.tensor(adata.X.toarray(), dtype=torch.float32)
    kernels = {
        "before": _load(Path(args.before) / "scamort" / "nb_rows.py", "nb_rows_before"),
        "after": _load(ROOT / "scamort" / "nb_rows.py", "nb_rows_after"),
    }
    generator = torch.Generator().manual_seed(0)
    log_theta = torch.randn(counts.shape[1], generator=generator).requires_grad_()
    seconds = {label: [] for label in kernels}
    for round_index in range(args.rounds):
        rows = torch.randperm(counts.shape[0], generator=generator)[: args.batch]
        dense = counts[rows]
        row, col = torch.nonzero(dense, as_tuple=True)
        values = dense[row, col]
        logits = torch.randn(dense.shape, generator=generator).requires_grad_()
        log_library = torch.log(dense.sum(1).clamp(min=1))
        order = list(kernels) if round_index % 2 == 0 else list(kernels)[::-1]
        for label in order:
            started = time.perf_counter()
            for _ in range(5):
                out = kernels[label].softmax_negative_binomial_rows(
                    logits, log_library, log_theta, row, col, values
                )
                out.sum().backward()
            seconds[label].append((time.perf_counter() - started) / 5)
    median = {label: float(np.median(s)) for label, s in seconds.items()}
    result = {
        "data": f"worm neurons, {adata.n_vars} HVGs, minibatches of {args.batch} cells",
        "kernel": "softmax_negative_binomial_rows forward + backward, 1 thread",
        "median_seconds": median,
        "ratio_after_over_before_time": median["after"] / median["before"],
        "nnz_fraction": float((counts > 0).float().mean()),
    }
    out_path = ROOT / "benchmarks" / "results" / "count_precision_kernel.json"
    out_path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
