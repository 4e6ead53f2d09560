"""Feature-level missingness: which features of a modality were measured in each cell.

A batch stained with a smaller antibody panel (or a targeted gene panel) did not measure some features;
their entries are *unmeasured*, never zeros. The user says so with ``Modality(measured_key=KEY)``:

- a boolean matrix cells × features, True where measured: ``.layers[KEY]`` for counts in ``.X`` or a
  layer, ``.obsm[KEY]`` (array, or DataFrame whose columns are the feature names) for ``.obsm`` counts;
- or a compact per-group table ``.uns[KEY]``: a boolean DataFrame groups × features whose
  ``index.name`` is the ``.obs`` column holding each cell's group (e.g. ``"batch"``), as written by
  :func:`scamort.pp.concat_panels`.

The masks are stored as a few distinct *patterns* (rows of measured features) and a pattern per cell,
which is what per-batch panels give and what a minibatch expands cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scamort.errors import InputError

__all__ = ["MeasuredPatterns", "drop_unmeasured", "read_measured", "refuse_unmeasured_features"]


@dataclass(frozen=True)
class MeasuredPatterns:
    """Which features each cell measured, as distinct patterns.

    Attributes
    ----------
    table
        ``(n_patterns, n_features)`` bool: True where the pattern's features were measured.
    pattern
        ``(n_cells,)`` int64: each cell's row of ``table``.
    """

    table: np.ndarray
    pattern: np.ndarray

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> MeasuredPatterns:
        """Patterns of a dense boolean matrix ``(n_cells, n_features)``."""
        packed = np.packbits(matrix, axis=1)
        if packed.shape[1] == 0:
            return cls(np.ones((1, matrix.shape[1]), dtype=bool), np.zeros(matrix.shape[0], dtype=np.int64))
        _, first, inverse = np.unique(packed, axis=0, return_index=True, return_inverse=True)
        return cls(np.ascontiguousarray(matrix[first]), inverse.reshape(-1).astype(np.int64))

    @property
    def all_measured(self) -> bool:
        """Whether every cell measured every feature (the mask is then equivalent to none)."""
        return bool(self.table.all())

    def cell_matrix(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The dense mask of cells ``rows`` (default all), ``(n_rows, n_features)`` bool."""
        return self.table[self.pattern if rows is None else self.pattern[rows]]

    def aligned(self, names: Sequence[str], expected: Sequence[str]) -> MeasuredPatterns:
        """The same patterns with columns reordered from ``names`` to ``expected`` (a subset)."""
        if list(names) == list(expected):
            return self
        positions = pd.Index(list(names)).get_indexer(pd.Index(list(expected)))
        return MeasuredPatterns(np.ascontiguousarray(self.table[:, positions]), self.pattern)

    def for_present(self, present: np.ndarray) -> MeasuredPatterns:
        """The same patterns with every cell lacking the modality (``present`` ``(n_cells,)`` False) on
        an all-measured one: their counts are never read, and no row of the mask is then empty."""
        table = np.vstack([self.table, np.ones((1, self.table.shape[1]), dtype=bool)])
        pattern = np.where(present, self.pattern, self.table.shape[0])
        used, compact = np.unique(pattern, return_inverse=True)
        return MeasuredPatterns(np.ascontiguousarray(table[used]), compact.reshape(-1).astype(np.int64))

    def expanded(self, rows: np.ndarray, n_cells: int) -> MeasuredPatterns:
        """Patterns of a container of ``n_cells`` whose cells ``rows`` are these; the other cells (absent
        from the modality, so never read) get an all-measured pattern."""
        table = np.vstack([self.table, np.ones((1, self.table.shape[1]), dtype=bool)])
        pattern = np.full(n_cells, self.table.shape[0], dtype=np.int64)
        pattern[rows] = self.pattern
        return MeasuredPatterns(table, pattern)


def _where(name: str, key: str, place: str) -> str:
    return f"Modality {name!r}: measured_key {key!r} ({place})"


def _from_group_table(
    table: object, adata: ad.AnnData, features: Sequence[str], name: str, key: str
) -> MeasuredPatterns:
    where = _where(name, key, f"a per-group table in .uns[{key!r}]")
    if not isinstance(table, pd.DataFrame):
        raise InputError(
            f"{where} must be a boolean DataFrame groups × features, got {type(table).__name__}."
        )
    column = table.index.name
    if column is None or column not in adata.obs.columns:
        raise InputError(
            f"{where} must name the .obs column of its groups as its index name (e.g. "
            f"table.index.name = 'batch'); {column!r} is not a column of .obs."
        )
    if not all(pd.api.types.is_bool_dtype(dtype) for dtype in table.dtypes):
        raise InputError(f"{where} must hold booleans (True where measured); convert it with .astype(bool).")
    missing = [f for f in features if f not in table.columns]
    if missing:
        raise InputError(
            f"{where} lacks {len(missing)} of the modality's features (e.g. {missing[0]!r}); give a column "
            "per feature."
        )
    groups = adata.obs[column].astype(str).to_numpy()
    index = pd.Index(table.index.astype(str))
    if not index.is_unique:
        raise InputError(f"{where} has repeated groups; give one row per group.")
    rows = index.get_indexer(groups)
    if (rows < 0).any():
        unknown = groups[np.flatnonzero(rows < 0)[0]]
        raise InputError(f"{where} has no row for group {unknown!r} of .obs[{column!r}]; add one.")
    values = table.loc[:, list(features)].to_numpy(dtype=bool)
    used, pattern = np.unique(rows, return_inverse=True)
    return MeasuredPatterns(np.ascontiguousarray(values[used]), pattern.reshape(-1).astype(np.int64))


def _from_matrix(
    raw: object, adata: ad.AnnData, features: Sequence[str], name: str, key: str, place: str
) -> MeasuredPatterns:
    where = _where(name, key, place)
    if isinstance(raw, pd.DataFrame):
        missing = [f for f in features if f not in raw.columns]
        if missing:
            raise InputError(
                f"{where} lacks {len(missing)} of the modality's features as columns (e.g. "
                f"{missing[0]!r}); give one column per feature."
            )
        if not all(pd.api.types.is_bool_dtype(dtype) for dtype in raw.dtypes):
            raise InputError(
                f"{where} must be boolean (True where measured), not counts or 0/1 numbers; "
                "convert it with .astype(bool)."
            )
        return MeasuredPatterns.from_matrix(raw.loc[:, list(features)].to_numpy(dtype=bool))
    shape = getattr(raw, "shape", None)
    if shape is None or len(shape) != 2:
        raise InputError(f"{where} must be a boolean matrix cells × features, got {type(raw).__name__}.")
    if tuple(shape) != (adata.n_obs, len(features)):
        raise InputError(
            f"{where} has shape {tuple(shape)} but the modality's counts are "
            f"({adata.n_obs}, {len(features)}); give one entry per cell and feature."
        )
    dtype = getattr(raw, "dtype", None)
    if dtype != np.bool_:
        raise InputError(
            f"{where} must be boolean (True where measured), got dtype {dtype}; convert it with "
            ".astype(bool)."
        )
    matrix = sp.csr_matrix(raw).toarray() if sp.issparse(raw) else np.asarray(raw)
    return MeasuredPatterns.from_matrix(matrix.astype(bool, copy=False))


def read_measured(
    adata: ad.AnnData, key: str, *, obsm: bool, features: Sequence[str], name: str
) -> MeasuredPatterns:
    """Read and validate the mask ``key`` of one modality of ``adata`` (only read, never modified).

    ``obsm`` says whether the counts come from ``.obsm`` (the matrix form is then in ``.obsm``, else in
    ``.layers``); the per-group table form is in ``.uns`` either way.

    Raises
    ------
    InputError
        If the key is nowhere, or the mask has the wrong shape, dtype, features or groups.
    """
    matrices = adata.obsm if obsm else adata.layers
    place = f".obsm[{key!r}]" if obsm else f".layers[{key!r}]"
    if key in matrices:
        return _from_matrix(matrices[key], adata, features, name, key, place)
    if key in adata.uns:
        return _from_group_table(adata.uns[key], adata, features, name, key)
    raise InputError(
        f"Modality {name!r}: measured_key {key!r} is neither in {'.obsm' if obsm else '.layers'} (a "
        "boolean matrix cells × features) nor in .uns (a per-group table); build it with "
        "scamort.pp.concat_panels or pass the right key."
    )


def refuse_empty_patterns(
    patterns: MeasuredPatterns, present: np.ndarray, cells: pd.Index, name: str, key: str
) -> None:
    """Refuse cells that have the modality but whose mask measures none of its features."""
    empty = ~np.asarray(patterns.table.any(axis=1))[patterns.pattern] & present
    if empty.any():
        example = cells[np.flatnonzero(empty)[0]]
        raise InputError(
            f"Modality {name!r}: measured_key {key!r} marks no feature measured in {int(empty.sum())} cells "
            f"that have the modality (e.g. {example!r}); mark them as lacking it with present_key or "
            "fix the mask."
        )


def refuse_unmeasured_features(
    patterns: MeasuredPatterns, present: np.ndarray, features: Sequence[str], name: str, key: str
) -> None:
    """Refuse (for training data) features that no cell with the modality measured."""
    used = np.unique(patterns.pattern[present])
    never = ~patterns.table[used].any(axis=0)
    if never.any():
        example = features[int(np.flatnonzero(never)[0])]
        raise InputError(
            f"Modality {name!r}: {int(never.sum())} features are measured in no training cell according "
            f"to measured_key {key!r} (e.g. {example!r}), so nothing can be learned about them; drop "
            "them from the data first."
        )


def drop_unmeasured(counts: sp.csr_matrix, patterns: MeasuredPatterns) -> sp.csr_matrix:
    """``counts`` ``(n_cells, n_features)`` without the entries its mask marks unmeasured (a new
    matrix), so that nothing stored under the mask reaches the model."""
    counts = sp.csr_matrix(counts, copy=True)
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    keep = patterns.table[patterns.pattern[rows], counts.indices]
    counts.data[~keep] = 0
    counts.eliminate_zeros()
    return counts
