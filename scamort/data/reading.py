"""Reading one modality's counts out of an AnnData as CSR, validated and aligned to the model's features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scamort.data.categories import refuse_missing_names
from scamort.data.modality import Modality
from scamort.data.validation import check_counts
from scamort.errors import InputError

__all__ = ["align_features", "feature_positions", "locate_counts", "read_counts"]

try:  # anndata >= 0.11
    from anndata.abc import CSCDataset, CSRDataset
except ImportError:  # pragma: no cover - older anndata
    from anndata.experimental import CSCDataset, CSRDataset

BackedSparse = (CSRDataset, CSCDataset)


def _describe(modality: Modality, container: str = "adata") -> str:
    if modality.obsm_key is not None:
        return f"{container}.obsm[{modality.obsm_key!r}]"
    return f"{container}.X" if modality.layer is None else f"{container}.layers[{modality.layer!r}]"


#: Rows converted at a time from a dense table to CSR (bounds the conversion's temporary arrays).
_DENSE_ROWS = 4096
#: Stored entries looked at a time for zeros.
_ZERO_CHECK_BLOCK = 1 << 22


def _dense_to_csr(dense: np.ndarray) -> sp.csr_matrix:
    """A canonical CSR of a 2-d array (its dtype), built block by block: scipy's own conversion makes
    int64 row and column arrays of every nonzero first, twice the size of the result."""
    n_rows = dense.shape[0]
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    for start in range(0, n_rows, _DENSE_ROWS):
        block = dense[start : start + _DENSE_ROWS]
        indptr[start + 1 : start + 1 + block.shape[0]] = np.count_nonzero(block, axis=1)
    np.cumsum(indptr, out=indptr)
    nnz = int(indptr[-1])
    index_dtype = np.int32 if max(nnz, dense.shape[1]) < 2**31 else np.int64
    data = np.empty(nnz, dtype=dense.dtype)
    indices = np.empty(nnz, dtype=index_dtype)
    for start in range(0, n_rows, _DENSE_ROWS):
        block = dense[start : start + _DENSE_ROWS]
        rows, columns = np.nonzero(block)  # row-major: sorted within each row
        first, last = indptr[start], indptr[start + block.shape[0]]
        data[first:last] = block[rows, columns]
        indices[first:last] = columns
    return sp.csr_matrix((data, indices, indptr.astype(index_dtype)), shape=dense.shape)


def _is_canonical_without_zeros(matrix: sp.csr_matrix) -> bool:
    """Sorted, duplicate-free column indices and no stored zeros (checked without changing ``matrix``)."""
    view = sp.csr_matrix((matrix.data, matrix.indices, matrix.indptr), shape=matrix.shape, copy=False)
    if not view.has_canonical_format:
        return False
    block = _ZERO_CHECK_BLOCK
    return not any(np.any(matrix.data[start : start + block] == 0) for start in range(0, matrix.nnz, block))


def _as_csr(matrix: Any) -> tuple[sp.csr_matrix, bool]:
    """A canonical CSR in the user's dtype, and whether it shares memory with the user's object.

    A canonical CSR without stored zeros is shared (read, never written); anything else is converted
    into a private copy."""
    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    if isinstance(matrix, BackedSparse):
        matrix = matrix.to_memory()
    if sp.issparse(matrix):
        dtype = matrix.dtype
    else:
        matrix = np.asarray(matrix)
        if matrix.ndim != 2:
            raise InputError(f"Expected a 2-d count matrix, got an array of shape {matrix.shape}.")
        if matrix.dtype == np.float16:  # scipy.sparse has no float16; float32 holds it exactly
            matrix = matrix.astype(np.float32)
        dtype = matrix.dtype
    if not (dtype == np.bool_ or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"Counts must be numeric; got dtype {dtype}.")
    if not sp.issparse(matrix):
        return _dense_to_csr(matrix), False
    if matrix.format == "csr" and _is_canonical_without_zeros(matrix):
        return sp.csr_matrix((matrix.data, matrix.indices, matrix.indptr), shape=matrix.shape), True
    csr = sp.csr_matrix(matrix, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    return csr, False


def _float32_counts(counts: sp.csr_matrix, shared: bool) -> sp.csr_matrix:
    """``counts`` as float32: the user's own arrays when they already are canonical float32 CSR
    (scamort only reads them: every later step that changes entries works on a copy), otherwise a
    private copy (one at most)."""
    if counts.dtype == np.float32 and (not shared or counts.data.flags.writeable):
        return counts
    return counts.astype(np.float32, copy=True)


def _feature_names(adata: ad.AnnData, container: str) -> list[str]:
    """``var_names`` as strings; a missing (NaN) name is refused, not turned into ``"nan"``."""
    refuse_missing_names(
        adata.var_names, f"{container}.var_names", "name every feature (e.g. from a gene-symbol column)"
    )
    return list(map(str, adata.var_names))


def _refuse_non_numeric_columns(table: pd.DataFrame, where: str) -> None:
    """Refuse a count table (an ``.obsm`` DataFrame) with a column that is not numbers, naming it."""
    for position, column in enumerate(table.columns):  # by position: names may repeat
        series = table.iloc[:, position]
        dtype = series.dtype
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)) or isinstance(
            dtype, pd.CategoricalDtype
        ):
            values = series.dropna()
            example = f" (e.g. {values.iloc[0]!r})" if len(values) else ""
            raise InputError(
                f"{where} column {str(column)!r} is not numeric: it has dtype {dtype}{example}; convert it "
                f"to counts (e.g. pd.to_numeric) or drop that column."
            )


def locate_counts(
    adata: ad.AnnData, modality: Modality, name: str, container: str = "adata"
) -> tuple[Any, list[str], str]:
    """Find one modality's counts without reading them: the stored matrix (in memory or an on-disk
    dataset), its feature names and a readable name of the source.

    Raises
    ------
    InputError
        If the layer or ``.obsm`` key is absent, ``.X`` is empty, or feature or cell names are missing.
    """
    where = _describe(modality, container)
    if modality.obsm_key is not None:
        if modality.obsm_key not in adata.obsm:
            available = ", ".join(map(repr, adata.obsm.keys())) or "none"
            raise InputError(
                f"Modality {name!r}: obsm key {modality.obsm_key!r} not found (available: {available})."
            )
        raw = adata.obsm[modality.obsm_key]
        if isinstance(raw, pd.DataFrame):
            refuse_missing_names(raw.columns, f"{where} (its columns)", "name every column")
            _refuse_non_numeric_columns(raw, where)
            names = [str(c) for c in raw.columns]
        else:
            names = [f"{name}_{i}" for i in range(raw.shape[1])]
    elif modality.layer is not None:
        if modality.layer not in adata.layers:
            available = ", ".join(map(repr, adata.layers.keys())) or "none"
            raise InputError(
                f"Modality {name!r}: layer {modality.layer!r} not found in {container}.layers "
                f"(available: {available}); use layer=None for {container}.X."
            )
        raw, names = adata.layers[modality.layer], _feature_names(adata, container)
    else:
        try:
            raw = adata.X
        except KeyError:  # a backed file without X: anndata raises h5py's KeyError
            raw = None
        if raw is None:
            raise InputError(f"Modality {name!r}: {container}.X is empty; pass the count layer with layer=.")
        names = _feature_names(adata, container)
    refuse_missing_names(adata.obs_names, f"{container}.obs_names", "name every cell")
    return raw, names, where


def read_counts(
    adata: ad.AnnData, modality: Modality, name: str, container: str = "adata", allow_no_cells: bool = False
) -> tuple[sp.csr_matrix, list[str], str]:
    """Return the validated counts of one modality.

    ``allow_no_cells`` accepts a member of a MuData that holds no cells (every cell lacks it).

    Returns
    -------
    counts
        CSR float32, shape ``(n_cells, n_features)``; it may share the user's arrays (a canonical
        float32 CSR is not copied), so callers copy before changing entries.
    feature_names
        Names of the columns.
    where
        A readable name of the source, for error messages.
    """
    raw, names, where = locate_counts(adata, modality, name, container)
    if (adata.n_obs == 0 and not allow_no_cells) or len(names) == 0:
        raise InputError(f"{where} is empty ({adata.n_obs} cells × {len(names)} features); nothing to model.")
    counts, shared = _as_csr(raw)
    check_counts(
        counts,
        where=where,
        cells=adata.obs_names,
        features=names,
        binary=modality.is_binary and not modality.binarize,
    )
    return _float32_counts(counts, shared), names, where


def refuse_duplicated_names(index: pd.Index, where: str) -> None:
    """One clear sentence when ``index`` (a modality's feature names, read from ``where``) repeats a name."""
    if not index.is_unique:
        repeated = index[index.duplicated()].unique()
        raise InputError(
            f"{where} has duplicated feature names (e.g. {', '.join(map(repr, repeated[:3]))}); make them "
            "unique first (e.g. adata.var_names_make_unique())."
        )


def feature_positions(names: Sequence[str], expected: Sequence[str], *, where: str) -> np.ndarray | None:
    """Column positions that reorder (and subset) ``names`` to follow ``expected``, shape
    ``(len(expected),)``; None when they already do. Refuses duplicated or missing features."""
    if list(names) == list(expected):
        return None
    index = pd.Index(names)
    refuse_duplicated_names(index, where)
    positions = index.get_indexer(pd.Index(expected))
    missing = [expected[int(i)] for i in np.flatnonzero(positions < 0)]
    if missing:
        raise InputError(
            f"{where} lacks {len(missing)} of the model's {len(expected)} features "
            f"(e.g. {', '.join(map(repr, missing[:3]))}); subset or reindex the data to the genes "
            "the model was trained on."
        )
    return positions


def align_features(
    counts: sp.csr_matrix, names: Sequence[str], expected: Sequence[str], *, where: str
) -> sp.csr_matrix:
    """Reorder (and subset) columns so they follow ``expected``; refuse if any are missing."""
    positions = feature_positions(names, expected, where=where)
    return counts if positions is None else counts[:, positions]
