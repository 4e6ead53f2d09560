"""Reading a modality's counts in blocks of rows, from wherever they are stored.

A :class:`RowSource` reads consecutive rows of one count matrix: an anndata on-disk sparse dataset
(``.h5ad``/``.h5mu`` opened backed, or a Zarr group through ``anndata.io.sparse_dataset``), an HDF5 or
Zarr dense array, or an in-memory matrix or DataFrame (the layers and ``.obsm`` that anndata loads when
it opens a backed file). Every read is a contiguous slice of at most ``chunk_size`` rows, so memory is
bounded by the rows asked for, whatever the number of cells (for CSR storage: anndata reads a row slice of
a CSC matrix on disk through all of its columns, which is slow).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scamort.data.reading import BackedSparse

__all__ = ["RowSource", "is_on_disk"]

try:
    import zarr

    _ZARR_ARRAYS: tuple[type, ...] = (zarr.Array,)
except ImportError:  # pragma: no cover - zarr ships with anndata
    _ZARR_ARRAYS = ()


def is_on_disk(matrix: object) -> bool:
    """Whether ``matrix`` is stored on disk (an anndata sparse dataset, an HDF5 or a Zarr array)."""
    return isinstance(matrix, (*BackedSparse, h5py.Dataset, *_ZARR_ARRAYS))


@dataclass
class _LastBlock:
    """The most recently read block, so that consecutive small reads of one block read it once."""

    start: int = -1
    block: sp.csr_matrix | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class RowSource:
    """Rows of one modality's stored count matrix, read in contiguous blocks.

    Attributes
    ----------
    matrix
        The stored matrix, rows × stored features (only sliced by rows, never read whole).
    where
        A readable name of it, for messages.
    columns
        Stored columns in the model's feature order ``(n_features,)``, or None: as stored.
    binarize
        Turn counts into presence (``x > 0``) as they are read.
    chunk_size
        Rows per read.
    """

    matrix: Any
    where: str
    columns: np.ndarray | None = None
    binarize: bool = False
    chunk_size: int = 8192
    _last: _LastBlock = field(default_factory=_LastBlock, init=False, compare=False, repr=False)

    @property
    def n_rows(self) -> int:
        """Rows of the stored matrix."""
        return int(self.matrix.shape[0])

    def block(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as stored (all stored columns, the stored values and dtype), CSR."""
        matrix = self.matrix
        if isinstance(matrix, pd.DataFrame):
            part: Any = matrix.iloc[start:stop].to_numpy()
        else:
            part = matrix[start:stop]
        if not sp.issparse(part):
            part = np.asarray(part)
            if part.dtype == np.float16:
                part = part.astype(np.float32)
        csr = sp.csr_matrix(part)
        csr.sum_duplicates()
        csr.eliminate_zeros()
        return csr

    def counts(self, block: sp.csr_matrix) -> sp.csr_matrix:
        """A validated stored block as the model reads it: float32, in the model's feature order,
        binarized if asked."""
        counts = block.astype(np.float32)
        if self.columns is not None:
            counts = counts[:, self.columns]
        if self.binarize:
            counts.data = (counts.data > 0).astype(np.float32)
            counts.eliminate_zeros()
        return sp.csr_matrix(counts)

    def _model_block(self, start: int) -> sp.csr_matrix:
        with self._last.lock:
            if self._last.start == start and self._last.block is not None:
                return self._last.block
        stop = min(start + self.chunk_size, self.n_rows)
        block = self.counts(self.block(start, stop))
        with self._last.lock:
            self._last.start, self._last.block = start, block
        return block

    def read(self, rows: np.ndarray) -> sp.csr_matrix:
        """The stored rows ``rows`` (sorted, unique, shape ``(n,)``) as the model reads them, CSR float32
        ``(n, n_features)``: only the ``chunk_size``-aligned blocks that hold a wanted row are read."""
        parts = []
        for block_id in np.unique(rows // self.chunk_size):
            start = int(block_id) * self.chunk_size
            block = self._model_block(start)
            wanted = rows[(rows >= start) & (rows < start + block.shape[0])] - start
            parts.append(block if wanted.size == block.shape[0] else block[wanted])
        if not parts:
            n_features = self.matrix.shape[1] if self.columns is None else len(self.columns)
            return sp.csr_matrix((0, n_features), dtype=np.float32)
        return sp.csr_matrix(sp.vstack(parts, format="csr"))
