"""Data of ``benchmarks/multimodal.py``: the bundled BMMC sets as aligned AnnData pairs, the seeded
paired / unpaired groups, and MuData holding only each group's measured modalities."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import scamort

PAIRED = "paired"


def load_cite() -> tuple[ad.AnnData, ad.AnnData]:
    """BMMC CITE-seq as two aligned AnnData: RNA (1000 genes) and protein (134 ADT), raw counts."""
    adata = scamort.datasets.bmmc_cite()
    obs = adata.obs[["cell_type", "batch"]].copy()
    rna = ad.AnnData(sp.csr_matrix(adata.layers["counts"], dtype=np.float32), obs=obs, var=adata.var[[]])
    protein = adata.obsm["protein_expression"]
    prot = ad.AnnData(
        sp.csr_matrix(protein.to_numpy(dtype=np.float32)),
        obs=obs.copy(),
        var=pd.DataFrame(index=[str(c) for c in protein.columns]),
    )
    return rna, prot


def load_multiome() -> tuple[ad.AnnData, ad.AnnData]:
    """BMMC Multiome as two aligned AnnData: RNA (600 genes) and ATAC (600 peaks, fragment counts)."""
    bundled = scamort.datasets.bmmc_multiome()
    rna, atac = bundled.mod["rna"].copy(), bundled.mod["atac"].copy()
    if not (rna.obs_names == atac.obs_names).all():
        raise RuntimeError("The multiome RNA and ATAC files do not list the same cells in order.")
    for part in (rna, atac):
        part.X = sp.csr_matrix(part.X, dtype=np.float32)
        part.obs = part.obs[["cell_type", "batch"]].copy()
    return rna, atac


def assign_groups(n_cells: int, second: str, seed: int) -> np.ndarray:
    """Seeded thirds: ``"paired"``, ``"rna_only"`` (second modality hidden) and ``"<second>_only"``."""
    order = np.random.default_rng(seed).permutation(n_cells)
    third = n_cells // 3
    groups = np.full(n_cells, PAIRED, dtype=object)
    groups[order[:third]] = "rna_only"
    groups[order[third : 2 * third]] = f"{second}_only"
    return groups.astype(str)


def to_mudata(parts: Mapping[str, ad.AnnData], keep: Mapping[str, np.ndarray], obs: pd.DataFrame) -> Any:
    """A MuData holding, for each modality, only the cells where ``keep[name]`` is True.

    ``obs`` (all cells) provides the ``.obs`` columns of the MuData. MuData orders its cells as the
    union of its modalities' cells (not as ``obs``): use :func:`positions` to line results up.
    """
    import mudata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = mudata.MuData({name: part[keep[name]].copy() for name, part in parts.items()})
    for column in obs.columns:
        mdata.obs[column] = obs.loc[mdata.obs_names, column].to_numpy()
    return mdata


def positions(model: scamort.Model, names: pd.Index) -> np.ndarray:
    """Positions of the cells ``names`` within the model's data, in that order."""
    rows = model.adata.obs_names.get_indexer(names)
    if (rows < 0).any():
        raise KeyError("Some cells are not in the model's data.")
    return rows
