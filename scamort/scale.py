"""Growing a real dataset to any size, in memory or straight to a ``.h5ad`` on disk.

Cells are bootstrapped from a real count matrix and each copy is binomially thinned (every count kept
with a per-cell probability drawn from ``thinning``), so new cells have the real cells' expression
programmes with new library sizes and sampling noise. Labels and other ``.obs`` columns follow their
source cell, so known cell types still separate.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scamort._checks import is_real_number, is_whole_number
from scamort.data.validation import check_counts
from scamort.errors import InputError

__all__ = ["grow", "grow_to_h5ad", "open_zarr"]


def _grown_chunks(
    counts: sp.csr_matrix,
    n_cells: int,
    thinning: tuple[float, float],
    seed: int,
    chunk_size: int,
) -> Iterator[tuple[np.ndarray, sp.csr_matrix]]:
    rng = np.random.default_rng(seed)
    for start in range(0, n_cells, chunk_size):
        size = min(chunk_size, n_cells - start)
        source = rng.integers(counts.shape[0], size=size)
        block = counts[source]
        keep = rng.uniform(*thinning, size=size)
        block.data = rng.binomial(block.data.astype(np.int64), np.repeat(keep, np.diff(block.indptr)))
        block.data = block.data.astype(np.float32)
        block.eliminate_zeros()
        empty = np.diff(block.indptr) == 0
        block = block.tolil() if empty.any() else block
        if empty.any():  # a thinned-away cell keeps one count of its source's top gene
            for row in np.flatnonzero(empty):
                block[row, counts[source[row]].indices[np.argmax(counts[source[row]].data)]] = 1
        block = sp.csr_matrix(block)
        block.eliminate_zeros()
        yield source, block


def _check_options(n_cells: object, thinning: object, chunk_size: object) -> None:
    """Refuse options :func:`grow` cannot use, before any work."""
    for value, name in ((n_cells, "n_cells"), (chunk_size, "chunk_size")):
        if not is_whole_number(value, 1):
            raise InputError(f"{name} must be a whole number >= 1, got {value!r}.")
    low, high = thinning if isinstance(thinning, tuple | list) and len(thinning) == 2 else (None, None)
    if not (is_real_number(low) and is_real_number(high) and 0 < low <= high <= 1):
        raise InputError(f"thinning must be a range (low, high) with 0 < low <= high <= 1, got {thinning!r}.")


def _source_counts(adata: ad.AnnData, layer: str | None) -> sp.csr_matrix:
    counts = sp.csr_matrix(adata.X if layer is None else adata.layers[layer], dtype=np.float64)
    check_counts(
        counts,
        where="adata.X" if layer is None else f"adata.layers[{layer!r}]",
        cells=adata.obs_names,
        features=adata.var_names,
    )
    counts = counts.astype(np.float32)
    keep = np.diff(counts.indptr) > 0
    if not keep.all():
        raise InputError("grow() needs source cells with at least one count; filter empty cells first.")
    return counts


def grow(
    adata: ad.AnnData,
    n_cells: int,
    *,
    layer: str | None = None,
    thinning: tuple[float, float] = (0.5, 1.0),
    seed: int = 0,
    chunk_size: int = 65_536,
) -> ad.AnnData:
    """A new AnnData of ``n_cells`` cells bootstrapped from ``adata`` with binomial thinning.

    Parameters
    ----------
    adata
        Real cells × genes raw counts (``.X`` or ``layer``); its ``.obs`` columns are carried along.
    n_cells
        Cells to generate.
    thinning
        Range of the per-cell probability of keeping each count.
    seed
        Random seed.
    chunk_size
        Cells generated at a time (bounds the working memory). The random stream is drawn chunk by
        chunk, so the same ``seed`` and ``chunk_size`` give the same cells (and :func:`grow_to_h5ad`
        with the same values writes them).

    Returns
    -------
    AnnData with CSR float32 counts in ``.X`` and ``obs["source_cell"]`` naming each cell's source.

    Raises
    ------
    InputError
        For ``n_cells`` or ``chunk_size`` below 1, a ``thinning`` range outside (0, 1], or source
        counts that are not raw counts or include empty cells.
    """
    _check_options(n_cells, thinning, chunk_size)
    counts = _source_counts(adata, layer)
    sources, blocks = [], []
    for source, block in _grown_chunks(counts, n_cells, thinning, seed, chunk_size):
        sources.append(source)
        blocks.append(block)
    obs = _grown_obs(adata, np.concatenate(sources))
    return ad.AnnData(X=sp.vstack(blocks).tocsr(), obs=obs, var=pd.DataFrame(index=adata.var_names))


def grow_to_h5ad(
    adata: ad.AnnData,
    n_cells: int,
    path: str | Path,
    *,
    layer: str | None = None,
    thinning: tuple[float, float] = (0.5, 1.0),
    seed: int = 0,
    chunk_size: int = 65_536,
) -> Path:
    """Like :func:`grow`, but appended chunk by chunk to a ``.h5ad`` file (memory stays bounded).

    Open the result with ``anndata.read_h5ad(path, backed="r")`` to train out of core.
    """
    _check_options(n_cells, thinning, chunk_size)
    path = Path(path)
    counts = _source_counts(adata, layer)
    sources = []
    chunks = _grown_chunks(counts, n_cells, thinning, seed, chunk_size)
    first_source, first = next(chunks)
    sources.append(first_source)
    ad.AnnData(X=first, var=pd.DataFrame(index=adata.var_names)).write_h5ad(path)
    with h5py.File(path, "a") as handle:
        matrix = ad.io.sparse_dataset(handle["X"])
        for source, block in chunks:
            matrix.append(block)
            sources.append(source)
        del handle["obs"]
        ad.io.write_elem(handle, "obs", _grown_obs(adata, np.concatenate(sources)))
    return path


def _grown_obs(adata: ad.AnnData, source: np.ndarray) -> pd.DataFrame:
    """``.obs`` of the grown cells: each copy's source row of ``adata.obs``, named ``cell0``, ``cell1``,
    ..., with the source cell's name in ``source_cell``."""
    obs = adata.obs.iloc[source].reset_index(drop=True)
    obs.index = [f"cell{i}" for i in range(len(source))]
    obs["source_cell"] = np.asarray(adata.obs_names)[source]
    return obs


def open_zarr(path: str | Path) -> ad.AnnData:
    """An AnnData over a Zarr store whose sparse count matrices stay on disk, for out-of-core training.

    ``.X`` and the layers stored sparse (CSR) are opened as anndata's on-disk sparse datasets
    (``anndata.io.sparse_dataset``), so :class:`scamort.Model` reads them in chunks of rows like a
    backed ``.h5ad``; ``.obs``, ``.var``, ``.obsm`` and dense layers are read into memory.

    Parameters
    ----------
    path
        A store written by ``AnnData.write_zarr`` (anndata's on-disk format).

    Returns
    -------
    AnnData
        Keep the store in place while the model uses it.

    Raises
    ------
    InputError
        If ``path`` is not an AnnData Zarr store.
    """
    import zarr

    if not Path(path).exists():
        raise InputError(f"{path} does not exist.")
    try:
        group = zarr.open_group(str(path), mode="r")
        encoding = group.attrs.get("encoding-type")
    except (FileNotFoundError, ValueError, KeyError, OSError, zarr.errors.GroupNotFoundError) as error:
        raise InputError(f"{path} is not a Zarr store ({type(error).__name__}).") from None
    if encoding != "anndata" or "obs" not in group or "var" not in group:
        raise InputError(f"{path} is not an AnnData Zarr store (written by AnnData.write_zarr).")

    def element(key: str) -> Any:
        stored = group[key]
        if stored.attrs.get("encoding-type") == "csr_matrix":
            return ad.io.sparse_dataset(stored)
        return ad.io.read_elem(stored)

    parts = {key: ad.io.read_elem(group[key]) for key in ("obs", "var", "obsm", "uns") if key in group}
    stored_layers = group["layers"] if "layers" in group else None
    names = list(stored_layers.keys()) if isinstance(stored_layers, zarr.Group) else []
    layers = {name: element(f"layers/{name}") for name in names}
    return ad.AnnData(X=element("X") if "X" in group else None, layers=layers, **parts)
