"""Checks that a count matrix can be modelled, with one-sentence errors that say how to fix it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scamort.errors import InputError

__all__ = [
    "MAX_COUNT",
    "check_categorical_column",
    "check_continuous_column",
    "check_counts",
    "check_obs_key",
    "missing_obs_column",
]


#: The largest count scamort accepts: 2^24, the largest whole number float32 (the dtype counts are held
#: in on the device) represents exactly. The likelihoods are correct over the whole range 0..MAX_COUNT
#: (their count-dependent terms are evaluated in float64); larger values are refused before any work.
MAX_COUNT = 2**24


#: Entries checked at a time: the checks' temporary arrays stay small whatever the matrix's size.
_CHECK_BLOCK = 1 << 20


def _first_location(
    matrix: sp.csr_matrix, position: int, cells: Sequence[str], features: Sequence[str]
) -> str:
    row = int(np.searchsorted(matrix.indptr, position, side="right") - 1)
    return f"cell {cells[row]!r}, feature {features[matrix.indices[position]]!r}"


def _count_and_first(data: np.ndarray, is_bad: Callable[[np.ndarray], np.ndarray]) -> tuple[int, int]:
    """How many entries of ``data`` ``is_bad`` flags and the position of the first (-1: none), block by
    block (no temporary array of the size of ``data``)."""
    n_bad, first = 0, -1
    for start in range(0, data.shape[0], _CHECK_BLOCK):
        bad = is_bad(data[start : start + _CHECK_BLOCK])
        found = int(np.count_nonzero(bad))
        if found and first < 0:
            first = start + int(np.flatnonzero(bad)[0])
        n_bad += found
    return n_bad, first


def check_counts(
    matrix: sp.csr_matrix,
    *,
    where: str,
    cells: Sequence[str],
    features: Sequence[str],
    binary: bool = False,
) -> None:
    """Raise :class:`InputError` unless ``matrix`` holds finite, non-negative whole numbers up to
    :data:`MAX_COUNT`.

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
    # (which entries, what they are, how to fix it); the first failing check is reported
    checks: list[tuple[Callable[[np.ndarray], np.ndarray], str, str]] = [
        (lambda d: ~np.isfinite(d), "NaN or infinite entries", "remove or fill them before fitting"),
        (
            lambda d: d < 0,
            "negative entries",
            "scamort models raw counts; pass the raw count layer with layer=",
        ),
        (
            lambda d: d != np.round(d),
            "non-integer entries",
            "scamort models raw counts, not normalised or log values; pass the raw count layer with layer=",
        ),
        (
            lambda d: d > MAX_COUNT,
            f"entries above {MAX_COUNT:,} (2^24), the largest count scamort supports",
            "float32 holds whole numbers exactly only up to there; check that these are raw counts of "
            "single features, and remove or rescale such features",
        ),
    ]
    if binary:
        binary_fix = "use binarize=True or a count likelihood"
        checks.append((lambda d: d > 1, "non-binary (not 0 or 1) entries", binary_fix))
    for is_bad, what, fix in checks:
        n_bad, first = _count_and_first(data, is_bad)
        if n_bad:
            location = _first_location(matrix, first, cells, features)
            raise InputError(f"{where} has {n_bad} {what} (first at {location}): {fix}.")


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
    """Return ``data.obs[key]`` as category labels (:func:`scamort.data.categories.category_labels`),
    refusing missing values and columns whose categories would merge or split silently."""
    from scamort.data.categories import category_labels

    column = check_obs_key(data, key, role)
    n_missing = int(column.isna().sum())
    if n_missing:
        raise InputError(
            f"{role} {key!r} has {n_missing} missing (NaN) values; fill them (e.g. with 'unknown') "
            "or drop those cells."
        )
    return category_labels(column, key, role)


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
