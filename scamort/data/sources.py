"""Where each modality's cells and counts come from: one AnnData, or the modalities of a MuData.

A MuData may be structurally unpaired: a modality's AnnData holds only the cells measured in it. Such
cells are *missing* that modality (explicitly, by membership), never inferred from all-zero counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scamort.data.measured import MeasuredPatterns, read_measured, refuse_empty_patterns
from scamort.data.modality import Modality
from scamort.data.reading import read_counts
from scamort.errors import InputError

__all__ = ["ModalityCounts", "is_mudata", "read_modalities"]


@dataclass(frozen=True)
class ModalityCounts:
    """One modality's validated counts over all cells of the container.

    Attributes
    ----------
    counts
        CSR float32 ``(n_cells, n_features)``; rows of missing cells are empty.
    feature_names
        Column names.
    where
        A readable name of the source, for messages.
    present
        Whether each cell was measured in this modality, ``(n_cells,)`` bool.
    measured
        Which features each cell measured (``Modality.measured_key``), or None: all of them.
    """

    counts: sp.csr_matrix
    feature_names: list[str]
    where: str
    present: np.ndarray
    measured: MeasuredPatterns | None = None


def is_mudata(data: object) -> bool:
    """Whether ``data`` is a MuData (checked without importing mudata unless needed)."""
    return type(data).__name__ == "MuData" and hasattr(data, "mod")


def _present_flag(obs: pd.DataFrame, key: str, name: str) -> np.ndarray:
    if key not in obs.columns:
        raise InputError(f"Modality {name!r}: present_key {key!r} is not a column of .obs.")
    column = obs[key]
    if column.isna().any() or not pd.api.types.is_bool_dtype(column):
        raise InputError(
            f"Modality {name!r}: present_key {key!r} must be a boolean column without missing values."
        )
    return column.to_numpy(dtype=bool)


def _expand_rows(counts: sp.csr_matrix, rows: np.ndarray, n_cells: int) -> sp.csr_matrix:
    """Place the rows of ``counts`` at positions ``rows`` of an ``n_cells``-row matrix (others empty)."""
    source = np.full(n_cells, counts.shape[0])
    source[rows] = np.arange(counts.shape[0])
    padded = sp.vstack([counts, sp.csr_matrix((1, counts.shape[1]), dtype=counts.dtype)]).tocsr()
    return padded[source]


def _measured(
    adata: ad.AnnData, modality: Modality, features: list[str], name: str
) -> MeasuredPatterns | None:
    if modality.measured_key is None:
        return None
    return read_measured(
        adata, modality.measured_key, obsm=modality.obsm_key is not None, features=features, name=name
    )


def read_modalities(data: ad.AnnData, modalities: Mapping[str, Modality]) -> dict[str, ModalityCounts]:
    """Read and validate every modality of ``data`` (an AnnData or a MuData), aligned to its cells.

    Raises
    ------
    InputError
        For unknown modality names, unreadable counts, or cells that have no modality at all.
    """
    out: dict[str, ModalityCounts] = {}
    if is_mudata(data) and not data.obs_names.is_unique:
        repeated = data.obs_names[data.obs_names.duplicated()][0]
        raise InputError(
            f"The MuData has duplicated cell names (e.g. {repeated!r}); its modalities are paired by name, "
            "so make them unique first (e.g. mdata.obs_names_make_unique())."
        )
    for name, modality in modalities.items():
        if is_mudata(data):
            if name not in data.mod:
                raise InputError(f"Modality {name!r} is not in the MuData (it has {', '.join(data.mod)}).")
            member = data.mod[name]
            counts, features, where = read_counts(
                member, modality, name, container=f"mdata.mod[{name!r}]", allow_no_cells=True
            )
            rows = data.obs_names.get_indexer(member.obs_names)
            if (rows < 0).any():
                raise InputError(
                    f"Modality {name!r} has cells that are not in the MuData's obs; call mdata.update()."
                )
            counts = _expand_rows(counts, rows, data.n_obs)
            present = np.zeros(data.n_obs, dtype=bool)
            present[rows] = True
            obs = data.obs
            patterns = _measured(member, modality, features, name)
            if patterns is not None:
                patterns = patterns.expanded(rows, data.n_obs)
        else:
            counts, features, where = read_counts(data, modality, name)
            present = np.ones(data.n_obs, dtype=bool)
            obs = data.obs
            patterns = _measured(data, modality, features, name)
        if modality.present_key is not None:
            present &= _present_flag(obs, modality.present_key, name)
        if patterns is not None:
            refuse_empty_patterns(patterns, present, data.obs_names, name, str(modality.measured_key))
        out[name] = ModalityCounts(counts, features, where, present, patterns)
    measured = np.zeros(data.n_obs, dtype=bool)
    for entry in out.values():
        measured |= entry.present
    if not measured.all():
        example = data.obs_names[np.flatnonzero(~measured)[0]]
        raise InputError(
            f"{int((~measured).sum())} cells (e.g. {example!r}) are missing every modality; drop them."
        )
    return out
