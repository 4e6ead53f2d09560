"""Checks that a count matrix can be modelled, with one-sentence errors that say how to fix it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scamort.errors import InputError

__all__ = [
    "check_categorical_column",
    "check_continuous_column",
    "check_counts",
    "check_obs_key",
    "missing_obs_column",
]


def _first_location(
    matrix: sp.csr_matrix, bad_data: np.ndarray, cells: Sequence[str], features: Sequence[str]
) -> str:
    position = int(np.flatnonzero(bad_data)[0])
    row = int(np.searchsorted(matrix.indptr, position, side="right") - 1)
    return f"cell {cells[row]!r}, feature {features[matrix.indices[position]]!r}"


def check_counts(
    matrix: sp.csr_matrix,
    *,
    where: str,
    cells: Sequence[str],
    features: Sequence[str],
    binary: bool = False,
) -> None:
    """Raise :class:`InputError` unless ``matrix`` holds finite, non-negative whole numbers.

    Parameters
    ----------
    matrix
        Counts as CSR, shape ``(n_cells, n_features)``.
    where
        Human-readable name of the source, e.g. ``"adata.layers['counts']"``.
    cells, features
        Names used to point at the first offending entry.
    binary
        Require values in {0, 1} (Bernoulli likelihood without binarisation).
    """
    data = matrix.data
    checks: list[tuple[np.ndarray, str, str]] = [
        (~np.isfinite(data), "NaN or infinite", "remove or fill them before fitting"),
        (data < 0, "negative", "scamort models raw counts; pass the raw count layer with layer="),
        (
            data != np.round(data),
            "non-integer",
            "scamort models raw counts, not normalised or log values; pass the raw count layer with layer=",
        ),
    ]
    if binary:
        checks.append((data > 1, "non-binary (not 0 or 1)", "use binarize=True or a count likelihood"))
    for bad, what, fix in checks:
        n_bad = int(np.count_nonzero(bad))
        if n_bad:
            location = _first_location(matrix, bad, cells, features)
            raise InputError(f"{where} has {n_bad} {what} entries (first at {location}): {fix}.")


def missing_obs_column(data: Any, key: str, role: str) -> InputError:
    """The error for a column missing from ``data.obs``; for a MuData, say which modalities hold it.

    Parameters
    ----------
    data
        The AnnData or MuData whose ``.obs`` lacks ``key``.
    key, role
        The column and what it is for (e.g. ``"batch_key"``), as the message names them.
    """
    modalities = getattr(data, "mod", None)
    holders = [name for name, mod in (modalities or {}).items() if key in mod.obs.columns]
    if holders:
        return InputError(
            f"{role} {key!r} is a column of the modalities' .obs ({', '.join(holders)}) but not of "
            f"mdata.obs; copy it there first, e.g. mdata.obs[{key!r}] = "
            f"pd.concat([m.obs[{key!r}] for m in mdata.mod.values()]).groupby(level=0).first()."
        )
    available = ", ".join(map(repr, data.obs.columns[:20])) or "none"
    where = "mdata.obs" if modalities is not None else "adata.obs"
    return InputError(f"{role} {key!r} is not a column of {where} (available: {available}).")


def check_obs_key(data: Any, key: str, role: str) -> pd.Series:
    """Return ``data.obs[key]`` (an AnnData or MuData) or raise a clear error naming what there is."""
    if key not in data.obs.columns:
        raise missing_obs_column(data, key, role)
    return data.obs[key]


def check_categorical_column(data: Any, key: str, role: str) -> pd.Series:
    """Return ``data.obs[key]`` as strings, refusing missing values."""
    column = check_obs_key(data, key, role)
    n_missing = int(column.isna().sum())
    if n_missing:
        raise InputError(
            f"{role} {key!r} has {n_missing} missing (NaN) values; fill them (e.g. with 'unknown') "
            "or drop those cells."
        )
    return column.astype(str)


def check_continuous_column(data: Any, key: str, role: str) -> np.ndarray:
    """Return ``data.obs[key]`` as float64, refusing non-numeric or non-finite values."""
    column = check_obs_key(data, key, role)
    try:
        values = column.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{role} {key!r} must be numeric; it has dtype {column.dtype}.") from None
    n_bad = int(np.count_nonzero(~np.isfinite(values)))
    if n_bad:
        raise InputError(f"{role} {key!r} has {n_bad} NaN or infinite values; fill or drop those cells.")
    return values
