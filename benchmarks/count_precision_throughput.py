"""Training throughput before/after the float64 count-dependent likelihood terms (issue 18).

Runs the same training (worm neurons, 2000 HVGs, batch 128, one thread) with two copies of the package,
alternating in one run, and writes cells/s of each to ``benchmarks/results/count_precision_throughput.json``.

    python benchmarks/count_precision_throughput.py --before /tmp/scamort_before --after . --repeats 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import sys, time, json
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
import anndata as ad
import scamort
assert scamort.__file__.startswith(sys.argv[1]), scamort.__file__
adata = ad.read_h5ad(sys.argv[2])
out = {}
for likelihood in sys.argv[4].split(","):
    model = scamort.Model(adata, likelihood=likelihood, seed=0)
    history = model.train(max_epochs=int(sys.argv[3]), train_size=1.0, early_stopping=False,
                          progress_bar=False)
    seconds = history["seconds"].to_numpy()[1:]  # the first epoch includes warm-up
    out[likelihood] = adata.n_obs * len(seconds) / float(seconds.sum())
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--likelihoods", default="nb,zinb,poisson")
    args = parser.parse_args()
    import scanpy as sc

    sys.path.insert(0, args.after)
    import scamort

    adata = scamort.datasets.worm_neurons()
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=2000, subset=True)
    path = Path(tempfile.mkdtemp()) / "worm_hvg.h5ad"
    adata.write_h5ad(path)
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(args.repeats):
        for label in ("before", "after"):
            root = str(Path(getattr(args, label)).resolve())
            result = subprocess.run(
                [sys.executable, "-c", CHILD, root, str(path), str(args.epochs), args.likelihoods],
                check=True,
                capture_output=True,
                text=True,
            )
            runs[label].append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(label, runs[label][-1], flush=True)
    summary = {}
    for likelihood in args.likelihoods.split(","):
        before = [r[likelihood] for r in runs["before"]]
        after = [r[likelihood] for r in runs["after"]]
        summary[likelihood] = {
            "before_cells_per_s": before,
            "after_cells_per_s": after,
            "ratio_after_over_before_of_means": sum(after) / sum(before),
            "paired_ratios": [a / b for a, b in zip(after, before, strict=True)],
            "median_paired_ratio": float(np.median([a / b for a, b in zip(after, before, strict=True)])),
        }
    result = {
        "data": f"worm neurons {adata.n_obs} cells x {adata.n_vars} HVGs",
        "protocol": (
            f"batch 128, {args.epochs} epochs (first excluded), train_size 1.0, 1 thread, alternating"
        ),
        "results": summary,
    }
    out = Path(__file__).resolve().parent / "results" / "count_precision_throughput.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
