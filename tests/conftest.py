"""Shared fixtures: small synthetic counts with known structure, and the bundled worm data."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch


def make_counts(
    n_cells: int = 240,
    n_genes: int = 60,
    n_types: int = 3,
    n_batches: int = 2,
    seed: int = 0,
    sparse: bool = True,
) -> ad.AnnData:
    """Negative-binomial counts from ``n_types`` expression programmes and a batch shift.

    ``obs["cell_type"]`` and ``obs["batch"]`` hold the truth; raw counts are in ``X`` and
    ``layers["counts"]``.
    """
    rng = np.random.default_rng(seed)
    programmes = rng.gamma(0.6, 1.0, size=(n_types, n_genes))
    batch_effect = rng.lognormal(0.0, 0.3, size=(n_batches, n_genes))
    cell_type = rng.integers(n_types, size=n_cells)
    batch = rng.integers(n_batches, size=n_cells)
    library = rng.lognormal(np.log(300), 0.3, size=n_cells)
    proportions = programmes[cell_type] * batch_effect[batch]
    proportions /= proportions.sum(1, keepdims=True)
    mu = proportions * library[:, None]
    theta = 5.0
    counts = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32)
    counts[counts.sum(1) == 0, 0] = 1
    matrix = sp.csr_matrix(counts) if sparse else counts
    adata = ad.AnnData(
        X=matrix,
        obs=pd.DataFrame(
            {
                "cell_type": pd.Categorical([f"type{t}" for t in cell_type]),
                "batch": pd.Categorical([f"b{b}" for b in batch]),
                "score": rng.normal(size=n_cells),
            },
            index=[f"cell{i}" for i in range(n_cells)],
        ),
        var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]),
    )
    adata.layers["counts"] = matrix.copy()
    return adata


def forget_init_params(model_dir: Path, *keys: str) -> None:
    """Delete ``keys`` from the constructor arguments of the model saved in ``model_dir``, so that it
    reads like a save from before those options existed."""
    spec_path = Path(model_dir) / "model.json"
    spec = json.loads(spec_path.read_text())
    for key in keys:
        del spec["init_params"][key]
    spec_path.write_text(json.dumps(spec))


@pytest.fixture
def counts_adata() -> ad.AnnData:
    """240 cells × 60 genes, 3 types, 2 batches (a fresh copy per test)."""
    return make_counts()


@pytest.fixture(scope="session")
def worm_hvg() -> ad.AnnData:
    """The bundled worm neurons, 2000 HVGs (seurat_v3 on counts), as in the benchmarks."""
    import scanpy as sc

    import scamort

    adata = scamort.datasets.worm_neurons()
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=2000, subset=True)
    return adata


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
