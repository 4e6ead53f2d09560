"""How a categorical ``.obs`` column becomes category labels, refusing what would merge or split silently.

The rules (the same for ``batch_key``, ``labels_key`` and categorical covariates, at training and query):

- A whole number is its integer text, whatever its type: ``1``, ``np.int64(1)`` and ``1.0`` are all the
  category ``"1"``, so a column that was integer at training and float at query (as after a round trip
  through a file or a merge with missing values) maps to the same categories.
- A float column with a value that is not a whole number is refused: it is continuous (pass it as a
  continuous covariate) or needs binning first.
- Values of different types that read the same (the integer ``1`` and the text ``"1"``, as after
  concatenating two tables) are refused instead of merged: the user says which is meant.
- A column of at least :data:`MIN_CELLS_FOR_UNIQUE_CHECK` cells in which every cell has its own category
  is refused: it is an identifier or a continuous value, and one category per cell is nothing to learn.
- Missing values are refused (by :func:`scamort.data.validation.check_categorical_column`).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import numpy as np
import pandas as pd

from scamort.errors import InputError

__all__ = ["MIN_CELLS_FOR_UNIQUE_CHECK", "category_labels", "legacy_labels", "refuse_missing_names"]

#: Columns with at least this many cells may not give every cell its own category.
MIN_CELLS_FOR_UNIQUE_CHECK = 10


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _label(value: object) -> str:
    """The category text of one non-missing value (whole numbers as integers)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_):
        return str(int(value))
    if _is_number(value) and np.isfinite(float(value)) and float(value) == np.round(float(value)):  # type: ignore[arg-type]
        return str(int(float(value)))  # type: ignore[arg-type]
    return str(value)


def _kind(value: object) -> str:
    if isinstance(value, bool | np.bool_):
        return "bool"
    if _is_number(value):
        return "number"
    if isinstance(value, str):  # numpy's str_ too
        return "str"
    return type(value).__name__


def category_labels(column: pd.Series, key: str, role: str) -> pd.Series:
    """``column`` (no missing values) as category labels, one string per cell; refuse ambiguous columns.

    Parameters
    ----------
    column
        The ``.obs`` column, shape ``(n_cells,)``.
    key, role
        Its name and what it is for (e.g. ``"batch_key"``), as messages name them.

    Returns
    -------
    pandas.Series of str, same index as ``column``.

    Raises
    ------
    InputError
        For a float column with non-integer values, values of different types that read the same, or
        (with at least :data:`MIN_CELLS_FOR_UNIQUE_CHECK` cells) one category per cell.
    """
    values = column.cat.categories if isinstance(column.dtype, pd.CategoricalDtype) else None
    distinct = list(values) if values is not None else list(pd.unique(column.to_numpy(dtype=object)))
    if values is not None:  # only the categories in use
        used = set(column.cat.codes.unique().tolist())
        distinct = [c for i, c in enumerate(values) if i in used]
    fractional = [v for v in distinct if _is_number(v) and float(v) != np.round(float(v))]
    if fractional:
        raise InputError(
            f"{role} {key!r} holds numbers that are not whole (e.g. {fractional[0]!r}), so it looks "
            "continuous, not categorical; pass it as a continuous covariate, or bin it into categories "
            "first (e.g. pd.cut)."
        )
    by_label: dict[str, list[object]] = {}
    for value in distinct:
        by_label.setdefault(_label(value), []).append(value)
    clashes = [group for group in by_label.values() if len({_kind(v) for v in group}) > 1]
    if clashes:
        shown = " and ".join(f"{v!r} ({type(v).__name__})" for v in clashes[0][:2])
        raise InputError(
            f"{role} {key!r} holds values of different types that read as the same category ({shown}), "
            "as after concatenating tables; convert the column to one type first (e.g. "
            f"adata.obs[{key!r}] = adata.obs[{key!r}].astype(str)) so scamort does not guess."
        )
    n_cells = len(column)
    if n_cells >= MIN_CELLS_FOR_UNIQUE_CHECK and len(by_label) == n_cells:
        raise InputError(
            f"{role} {key!r} gives every one of its {n_cells} cells its own category, so it is an "
            "identifier or a continuous value, not a grouping; pass a column that groups cells (or a "
            "continuous covariate)."
        )
    mapping = {value: label for label, group in by_label.items() for value in group}
    if values is not None:
        codes = column.cat.codes.to_numpy()
        texts = np.array([mapping.get(c, str(c)) for c in values], dtype=object)
        return pd.Series(texts[codes], index=column.index, dtype=object)
    return pd.Series([mapping[v] for v in column.to_numpy(dtype=object)], index=column.index, dtype=object)


def legacy_labels(column: pd.Series) -> pd.Series:
    """Labels as models saved before :func:`category_labels` read them (``str`` of each value)."""
    return column.astype(str)


def refuse_missing_names(names: Iterable[object], where: str, fix: str) -> None:
    """Refuse missing (NaN / None) names, which ``str`` would silently turn into ``"nan"``.

    Parameters
    ----------
    names
        Feature or cell names.
    where
        What holds them, e.g. ``"adata.var_names"``.
    fix
        How to fix it, as the end of the message.
    """
    index = pd.Index(list(names), dtype=object)
    missing = np.flatnonzero(index.isna())
    if missing.size:
        raise InputError(
            f"{where} has {missing.size} missing (NaN) names (first at position {int(missing[0])}); {fix}."
        )
