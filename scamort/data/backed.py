"""Out-of-core cells: counts stay on disk and are read in shuffled chunks of rows.

Every modality of a backed ``.h5ad`` or ``.h5mu`` (``.X``, a layer or ``.obsm``), or of an AnnData over
a Zarr store, is read this way (see :mod:`scamort.data.out_of_core`). Host memory is bounded by the chunk
pool (``chunk_size × pool_chunks`` rows, times ``1 + prefetch`` pools), whatever the number of cells:
per-cell covariates, presence and library sizes (a few numbers per cell) are all that is held for every
cell. The model, the loop and the queries are the same as in memory; only the order of cells within an
epoch differs (blocks of consecutive cells are shuffled, then cells within a pool of blocks).

While one pool trains, the next ``prefetch`` pools are read and decoded on a background thread. Reading
draws no random numbers and the pools are consumed in order, so prefetching changes only when rows are
read, never which minibatches are made: the same seed trains the same weights with or without it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch

from scamort.data.cell_data import CellData, Minibatch, ModalityTensors
from scamort.data.out_of_core import DiskModality, ModalitySummary, is_out_of_core, open_modalities
from scamort.data.registry import Registry

__all__ = ["BackedCellData", "EncodedCells", "is_backed", "is_out_of_core"]

CPU = torch.device("cpu")


def is_backed(data: object) -> bool:
    """Whether ``data`` is an AnnData opened in backed mode."""
    return isinstance(data, ad.AnnData) and data.isbacked


def _rows_of(counts: sp.csr_matrix, positions: np.ndarray, have: np.ndarray) -> sp.csr_matrix:
    """Rows ``positions`` of ``counts`` where ``have`` ``(n,)`` bool, empty rows elsewhere."""
    padded = sp.vstack([counts, sp.csr_matrix((1, counts.shape[1]), dtype=np.float32)], format="csr")
    return padded[np.where(have, positions, counts.shape[0])]


@dataclass(frozen=True)
class BackedCellData:
    """Cells whose counts are on disk, read on demand in chunks.

    Offers what training and the queries use from :class:`CellData`: ``n_cells``, ``device``, ``to``,
    ``modalities`` (presence and library sizes only), ``restricted_to``, ``epoch_order``, ``iterate``,
    ``minibatch`` and ``take``.

    Attributes
    ----------
    disk
        The modalities, each read from its stored matrix.
    covariates
        The per-cell covariates of all cells, as a :class:`CellData` without counts.
    chunk_size, pool_chunks
        Rows per read, and blocks shuffled together in one pool.
    target_device
        Where minibatches are placed.
    prefetch
        Pools read ahead on a background thread while the current one trains (0: none).
    """

    disk: tuple[DiskModality, ...]
    covariates: CellData
    chunk_size: int = 8192
    pool_chunks: int = 4
    target_device: torch.device = CPU
    prefetch: int = 1

    @classmethod
    def create(
        cls, data: object, registry: Registry, covariates: CellData, chunk_size: int = 8192
    ) -> BackedCellData:
        """Validate (chunk by chunk) and open every modality of ``data`` (AnnData or MuData)."""
        return cls(open_modalities(data, registry, chunk_size), covariates, chunk_size)

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return self.covariates.n_cells

    @property
    def cell_keys(self) -> torch.Tensor | None:
        """Stable per-cell ids from the cell names (see :class:`CellData`)."""
        return self.covariates.cell_keys

    @property
    def device(self) -> torch.device:
        """Where minibatches are placed."""
        return self.target_device

    @property
    def modalities(self) -> dict[str, ModalitySummary]:
        """Per modality, every cell's presence and library size (the counts stay on disk)."""
        return {m.name: m.summary for m in self.disk}

    def to(self, device: torch.device | str) -> BackedCellData:
        """The same data, with minibatches placed on ``device``."""
        device = torch.device(device)
        disk = tuple(replace(m, summary=m.summary.to(device)) for m in self.disk)
        return replace(self, disk=disk, covariates=self.covariates.to(device), target_device=device)

    def restricted_to(self, names: Sequence[str]) -> BackedCellData:
        """The same cells with every modality not in ``names`` marked unmeasured in all of them."""
        disk = tuple(
            m
            if m.name in names
            else replace(m, summary=replace(m.summary, present=torch.zeros_like(m.summary.present)))
            for m in self.disk
        )
        return replace(self, disk=disk)

    def epoch_order(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A shuffled order of ``index`` that reads well from disk: blocks of ``chunk_size`` consecutive
        entries are shuffled, then entries within each pool of ``pool_chunks`` blocks."""
        blocks = list(torch.split(index, self.chunk_size))
        block_order = torch.randperm(len(blocks), generator=generator, device=generator.device)
        ordered = [blocks[i] for i in block_order.tolist()]
        pools = []
        for start in range(0, len(ordered), self.pool_chunks):
            pool = torch.cat(ordered[start : start + self.pool_chunks])
            pools.append(pool[torch.randperm(pool.shape[0], generator=generator, device=generator.device)])
        return torch.cat(pools) if pools else index

    def _counts(self, modality: DiskModality, rows: np.ndarray) -> sp.csr_matrix:
        """Counts of the cells at positions ``rows`` ``(n,)`` in that order, CSR ``(n, n_features)``."""
        stored = rows if modality.member_rows is None else modality.member_rows[rows]
        have = stored >= 0
        unique = np.unique(stored[have])
        counts = modality.source.read(unique)
        positions = np.searchsorted(unique, np.where(have, stored, 0))
        if have.all():
            return counts[positions]
        return _rows_of(counts, positions, have)

    def take(self, index: torch.Tensor) -> CellData:
        """The cells at positions ``index`` ``(n,)`` (any order), read from disk, as an in-memory
        :class:`CellData` on the device."""
        rows = index.cpu().numpy()
        positions = torch.as_tensor(rows, device=self.covariates.device)
        modalities = {
            m.name: ModalityTensors.from_csr(
                self._counts(m, rows), m.summary.present[positions].cpu().numpy()
            ).to(self.device)
            for m in self.disk
        }
        return CellData(
            modalities=modalities,
            batch_index=self.covariates.batch_index[positions],
            categorical=self.covariates.categorical[positions],
            continuous=self.covariates.continuous[positions],
            labels=None if self.covariates.labels is None else self.covariates.labels[positions],
        )

    def minibatch(self, index: torch.Tensor) -> Minibatch:
        """Cells at positions ``index`` as one minibatch."""
        return self.take(index).slice(0, index.shape[0])

    def _windows(self, index: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
        """``index`` cut into pools of whole minibatches (the last one may be short)."""
        window = self.chunk_size * self.pool_chunks
        window -= window % batch_size or 0
        window = max(window, batch_size)
        return [index[start : start + window] for start in range(0, index.shape[0], window)]

    def iterate(self, index: torch.Tensor, batch_size: int) -> Iterator[Minibatch]:
        """Minibatches over ``index`` in order, reading one pool of rows at a time (the next ``prefetch``
        pools in the background)."""
        windows = self._windows(index, batch_size)
        if self.prefetch <= 0 or len(windows) == 1:
            for chunk in windows:
                yield from self._pool_batches(self.take(chunk), chunk.shape[0], batch_size)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scamort-prefetch") as executor:
            pending: deque[Future[CellData]] = deque()
            upcoming = iter(windows)
            try:
                for chunk in upcoming:
                    pending.append(executor.submit(self.take, chunk))
                    if len(pending) > self.prefetch:
                        break
                while pending:
                    pool = pending.popleft().result()
                    following = next(upcoming, None)
                    if following is not None:
                        pending.append(executor.submit(self.take, following))
                    yield from self._pool_batches(pool, pool.n_cells, batch_size)
            finally:
                for future in pending:  # stopped early (e.g. a time budget): drop what was read ahead
                    future.cancel()

    @staticmethod
    def _pool_batches(pool: CellData, n: int, batch_size: int) -> Iterator[Minibatch]:
        """Minibatches of consecutive cells of a pool that is already in order (slices, no copy)."""
        host_indptrs = {name: t.indptr.cpu().numpy() for name, t in pool.modalities.items()}
        for start in range(0, n, batch_size):
            yield pool.slice(start, min(start + batch_size, n), host_indptrs)


#: Encoded cells as the model, training and inference read them: in memory or out of core (both give
#: ``n_cells``, ``device``, ``modalities``, ``cell_keys``, ``to``, ``epoch_order``, ``minibatch`` and
#: ``iterate``).
EncodedCells = CellData | BackedCellData
