"""One reusable check that scamort left a user's AnnData / MuData deeply unchanged, and one that no
optimiser step ran.

``take(data)`` records everything a user keeps in the object, byte for byte: ``X`` and every layer
(values, dtype, storage format, and for sparse matrices ``data`` / ``indices`` / ``indptr``), ``obs`` and
``var`` (column names, dtypes, categories, every value with its type, the index and its dtype),
``obsm`` / ``varm`` / ``obsp`` / ``varp``, ``uns`` (recursively), ``raw``, whether it is a view, and for
a backed object the file's SHA-256; for a MuData the same for every modality plus its own ``obs``,
``obsm`` and ``uns``. ``assert_unchanged(data, before)`` names every part that differs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

__all__ = ["assert_refused", "assert_unchanged", "count_optimizer_steps", "deny_writing", "take"]


def _array(values: np.ndarray) -> tuple:
    values = np.asarray(values)
    if values.dtype == object:
        return ("object", values.shape, tuple((type(v).__name__, repr(v)) for v in values.ravel()))
    return (str(values.dtype), values.shape, np.ascontiguousarray(values).tobytes())


def _matrix(matrix: Any) -> Any:
    if matrix is None:
        return None
    if isinstance(matrix, pd.DataFrame):
        return ("frame", _frame(matrix))
    if sp.issparse(matrix):
        parts = (
            (matrix.row, matrix.col)
            if matrix.format == "coo"
            else (matrix.indices, matrix.indptr)
            if matrix.format in ("csr", "csc")
            else (matrix.toarray(),)
        )
        head = ("sparse", type(matrix).__name__, matrix.format, matrix.shape, _array(matrix.data))
        return (*head, *(_array(p) for p in parts))
    if hasattr(matrix, "to_memory"):  # a backed sparse dataset: compared through the file's digest
        return ("backed", type(matrix).__name__, tuple(matrix.shape))
    return ("dense", type(matrix).__name__, _array(np.asarray(matrix)))


def _index(index: pd.Index) -> tuple:
    return (type(index).__name__, str(index.dtype), index.name, _array(index.to_numpy(dtype=object)))


def _frame(frame: pd.DataFrame) -> tuple:
    columns = []
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.CategoricalDtype):
            values = (
                "category",
                column.cat.ordered,
                _array(column.cat.categories.to_numpy(dtype=object)),
                _array(column.cat.codes.to_numpy()),
            )
        else:
            values = (str(column.dtype), _array(column.to_numpy(dtype=object)))
        columns.append(((type(name).__name__, repr(name)), values))
    return (_index(frame.index), _index(frame.columns), tuple(columns))


def _deep(value: Any) -> Any:
    if isinstance(value, dict) or (hasattr(value, "keys") and hasattr(value, "__getitem__")):
        return ("dict", tuple((repr(k), _deep(value[k])) for k in value.keys()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_deep(v) for v in value))
    if isinstance(value, pd.DataFrame):
        return ("frame", _frame(value))
    if isinstance(value, np.ndarray) or sp.issparse(value):
        return _matrix(value)
    return (type(value).__name__, repr(value))


def _anndata(adata: Any, prefix: str) -> dict[str, Any]:
    state: dict[str, Any] = {
        f"{prefix}is_view": adata.is_view,
        f"{prefix}shape": adata.shape,
        f"{prefix}obs": _frame(adata.obs),
        f"{prefix}var": _frame(adata.var),
        f"{prefix}uns": _deep(dict(adata.uns)),
        f"{prefix}raw": None
        if adata.raw is None
        else (_matrix(adata.raw.X), _frame(adata.raw.var), _index(adata.raw.obs_names)),
    }
    if getattr(adata, "isbacked", False):
        state[f"{prefix}file"] = hashlib.sha256(Path(adata.filename).read_bytes()).hexdigest()
    else:
        state[f"{prefix}X"] = _matrix(adata.X)
    for slot in ("layers", "obsm", "varm", "obsp", "varp"):
        mapping = getattr(adata, slot)
        state[f"{prefix}{slot} keys"] = tuple(mapping.keys())
        for key in mapping.keys():
            state[f"{prefix}{slot}[{key!r}]"] = _matrix(mapping[key])
    return state


def take(data: Any) -> dict[str, Any]:
    """Everything a user keeps in ``data`` (an AnnData or MuData), as comparable plain values."""
    if hasattr(data, "mod"):
        state = {
            "mdata.obs": _frame(data.obs),
            "mdata.var": _frame(data.var),
            "mdata.uns": _deep(dict(data.uns)),
            "mdata.obsm keys": tuple(data.obsm.keys()),
            "mdata.mod keys": tuple(data.mod.keys()),
        }
        for key in data.obsm.keys():
            state[f"mdata.obsm[{key!r}]"] = _matrix(data.obsm[key])
        for name, member in data.mod.items():
            state.update(_anndata(member, f"mdata.mod[{name!r}]."))
        return state
    return _anndata(data, "adata.")


def assert_unchanged(data: Any, before: dict[str, Any]) -> None:
    """Assert that ``data`` equals the snapshot ``before`` (from :func:`take`), naming what differs."""
    after = take(data)
    differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not differ, f"scamort changed the user's object: {', '.join(differ)}"


class _StepCounter:
    def __init__(self) -> None:
        self.calls = 0


@contextmanager
def count_optimizer_steps() -> Iterator[_StepCounter]:
    """Count calls of any torch optimiser's ``step`` (AdamW included) inside the block."""
    counter = _StepCounter()
    originals = {}
    for cls in (torch.optim.Optimizer, torch.optim.AdamW, torch.optim.Adam):
        if "step" in vars(cls):
            originals[cls] = vars(cls)["step"]

    def wrap(original):
        def step(self, *args, **kwargs):
            counter.calls += 1
            return original(self, *args, **kwargs)

        return step

    try:
        for cls, original in originals.items():
            cls.step = wrap(original)
        yield counter
    finally:
        for cls, original in originals.items():
            cls.step = original


def assert_refused(call, error: type[BaseException], match: str, *objects: Any) -> BaseException:
    """``call()`` raises ``error`` whose message matches ``match`` (it names the thing at fault), no
    optimiser step runs, and every one of ``objects`` (AnnData / MuData) is deeply unchanged."""
    import pytest

    before = [take(data) for data in objects]
    with count_optimizer_steps() as steps, pytest.raises(error, match=match) as caught:
        call()
    assert steps.calls == 0, f"{steps.calls} optimiser steps ran before the refusal"
    for data, state in zip(objects, before, strict=True):
        assert_unchanged(data, state)
    message = str(caught.value)
    assert "Traceback" not in message and "\n" not in message.strip(), message
    return caught.value


def deny_writing(monkeypatch: Any, folder: Path) -> None:
    """Make ``folder`` read-only for scamort's checks (tests run as root, whom chmod does not stop)."""
    real_access = os.access

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if Path(path).absolute() == folder.absolute() and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
