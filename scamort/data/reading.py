"""Reading one modality's counts out of an AnnData as CSR, validated and aligned to the model's features."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scamort.data.modality import Modality
from scamort.data.validation import check_counts
from scamort.errors import InputError

__all__ = ["align_features", "read_counts"]

try:  # anndata >= 0.11
    from anndata.abc import CSCDataset, CSRDataset
except ImportError:  # pragma: no cover - older anndata
    from anndata.experimental import CSCDataset, CSRDataset

BackedSparse = (CSRDataset, CSCDataset)


def _describe(modality: Modality) -> str:
    if modality.obsm_key is not None:
        return f"adata.obsm[{modality.obsm_key!r}]"
    return "adata.X" if modality.layer is None else f"adata.layers[{modality.layer!r}]"


def _as_csr(matrix: object) -> sp.csr_matrix:
    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    if isinstance(matrix, BackedSparse):
        matrix = matrix.to_memory()
    if sp.issparse(matrix):
        return sp.csr_matrix(matrix, dtype=np.float32)
    array = np.asarray(matrix)
    if array.ndim != 2:
        raise InputError(f"Expected a 2-d count matrix, got an array of shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"Counts must be numeric; got dtype {array.dtype}.")
    return sp.csr_matrix(array.astype(np.float32, copy=False))


def read_counts(adata: ad.AnnData, modality: Modality, name: str) -> tuple[sp.csr_matrix, list[str], str]:
    """Return the validated counts of one modality.

    Returns
    -------
    counts
        CSR float32, shape ``(n_cells, n_features)``; never shares memory that scamort later modifies.
    feature_names
        Names of the columns.
    where
        A readable name of the source, for error messages.
    """
    where = _describe(modality)
    if modality.obsm_key is not None:
        if modality.obsm_key not in adata.obsm:
            available = ", ".join(map(repr, adata.obsm.keys())) or "none"
            raise InputError(
                f"Modality {name!r}: obsm key {modality.obsm_key!r} not found (available: {available})."
            )
        raw = adata.obsm[modality.obsm_key]
        names = (
            [str(c) for c in raw.columns]
            if isinstance(raw, pd.DataFrame)
            else [f"{name}_{i}" for i in range(raw.shape[1])]
        )
    elif modality.layer is not None:
        if modality.layer not in adata.layers:
            available = ", ".join(map(repr, adata.layers.keys())) or "none"
            raise InputError(
                f"Modality {name!r}: layer {modality.layer!r} not found in adata.layers "
                f"(available: {available}); use layer=None for adata.X."
            )
        raw, names = adata.layers[modality.layer], list(map(str, adata.var_names))
    else:
        if adata.X is None:
            raise InputError(f"Modality {name!r}: adata.X is empty; pass the count layer with layer=.")
        raw, names = adata.X, list(map(str, adata.var_names))
    if adata.n_obs == 0 or len(names) == 0:
        raise InputError(f"{where} is empty ({adata.n_obs} cells × {len(names)} features); nothing to model.")
    counts = _as_csr(raw)
    check_counts(
        counts,
        where=where,
        cells=adata.obs_names,
        features=names,
        binary=modality.likelihood == "bernoulli" and not modality.binarize,
    )
    return counts, names, where


def align_features(
    counts: sp.csr_matrix, names: Sequence[str], expected: Sequence[str], *, where: str
) -> sp.csr_matrix:
    """Reorder (and subset) columns so they follow ``expected``; refuse if any are missing."""
    if list(names) == list(expected):
        return counts
    positions = pd.Index(names).get_indexer(pd.Index(expected))
    missing = [expected[i] for i in np.flatnonzero(positions < 0)]
    if missing:
        raise InputError(
            f"{where} lacks {len(missing)} of the model's {len(expected)} features "
            f"(e.g. {', '.join(map(repr, missing[:3]))}); subset or reindex the data to the genes "
            "the model was trained on."
        )
    return counts[:, positions]
