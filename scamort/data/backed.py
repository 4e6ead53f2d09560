"""Out-of-core cells: counts stay on disk and are read in shuffled chunks of rows.

Every modality of a backed ``.h5ad`` or ``.h5mu`` (``.X``, a layer or ``.obsm``), or of an AnnData over
a Zarr store, is read this way (see :mod:`scamort.data.out_of_core`). Host memory is bounded by the chunk
pool (``chunk_size × pool_chunks`` rows, times ``1 + prefetch`` pools), whatever the number of cells:
per-cell covariates, presence and library sizes (a few numbers per cell) are all that is held for every
cell. The model, the loop and the queries are the same as in memory; only the order of cells within an
epoch differs (blocks of consecutive cells are shuffled, then cells within a pool of blocks).

While one pool trains, the next ``prefetch`` pools can be read and decoded on a background thread. By
default this happens only when a core is free for the reader: when minibatches go to an accelerator, or
when the process may use more cores than torch's intra-op threads. On a CPU whose every core already
runs torch's threads, a reader thread takes a core from them at every synchronisation, which costs more
than reading the pool in line. Reading draws no random numbers and the pools are consumed in order, so
prefetching changes only when rows are read, never which minibatches are made: the same seed trains the
same weights with or without it.
"""

from __future__ import annotations

import itertools
import os
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

__all__ = ["BackedCellData", "EncodedCells", "default_prefetch", "is_backed", "is_out_of_core"]

CPU = torch.device("cpu")
#: Entries of a cell index scanned at a time when cutting it into pools.
_ENTRIES_PER_SCAN = 1 << 16


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
        Pools read ahead on a background thread while the current one trains (0: none; None: one when
        a core is free for reading, see :func:`default_prefetch`).
    """

    disk: tuple[DiskModality, ...]
    covariates: CellData
    chunk_size: int = 8192
    pool_chunks: int = 4
    target_device: torch.device = CPU
    prefetch: int | None = None

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

    def rechunked(
        self, chunk_size: int, pool_chunks: int | None = None, prefetch: int | None = None
    ) -> BackedCellData:
        """The same data read ``chunk_size`` rows at a time, ``pool_chunks`` blocks per pool and
        ``prefetch`` pools ahead (None: unchanged)."""
        disk = tuple(replace(m, source=replace(m.source, chunk_size=chunk_size)) for m in self.disk)
        return replace(
            self,
            disk=disk,
            chunk_size=chunk_size,
            pool_chunks=self.pool_chunks if pool_chunks is None else pool_chunks,
            prefetch=self.prefetch if prefetch is None else prefetch,
        )

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
        """A shuffled order of ``index`` that reads well from disk: the entries of each stored block of
        ``chunk_size`` rows stay together, blocks are shuffled, then entries within each pool of
        ``pool_chunks`` blocks (so that every block is read once per epoch)."""
        _, sizes = torch.unique_consecutive(
            torch.div(index, self.chunk_size, rounding_mode="floor"), return_counts=True
        )
        blocks = list(torch.split(index, sizes.tolist()))
        block_order = torch.randperm(len(blocks), generator=generator, device=generator.device)
        ordered = [blocks[i] for i in block_order.tolist()]
        order = torch.empty_like(index)  # filled pool by pool: no second index-sized copy
        filled = 0
        for start in range(0, len(ordered), self.pool_chunks):
            pool = torch.cat(ordered[start : start + self.pool_chunks])
            size = pool.shape[0]
            order[filled : filled + size] = pool[
                torch.randperm(size, generator=generator, device=generator.device)
            ]
            filled += size
        return order

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
        modalities = {m.name: self._tensors(m, rows, positions) for m in self.disk}
        return CellData(
            modalities=modalities,
            batch_index=self.covariates.batch_index[positions],
            categorical=self.covariates.categorical[positions],
            continuous=self.covariates.continuous[positions],
            labels=None if self.covariates.labels is None else self.covariates.labels[positions],
        )

    def _tensors(self, modality: DiskModality, rows: np.ndarray, positions: torch.Tensor) -> ModalityTensors:
        """One modality of the cells at ``rows``: the counts read from disk, library sizes and
        log-factorials from the summary (the same values :meth:`ModalityTensors.from_csr` computes)."""
        counts = self._counts(modality, rows)
        counts.sum_duplicates()
        summary = modality.summary
        return ModalityTensors(
            indptr=torch.as_tensor(counts.indptr.astype(np.int64)),
            indices=torch.as_tensor(counts.indices.astype(np.int32, copy=False)),
            values=torch.as_tensor(counts.data.astype(np.float32, copy=False)),
            n_features=counts.shape[1],
            log_library=summary.log_library[positions].cpu(),
            log_factorial=summary.log_factorial[positions].cpu(),
            present=summary.present[positions].cpu(),
        ).to(self.device)

    def minibatch(self, index: torch.Tensor) -> Minibatch:
        """Cells at positions ``index`` as one minibatch."""
        return self.take(index).slice(0, index.shape[0])

    def _windows(self, index: torch.Tensor) -> list[torch.Tensor]:
        """``index`` cut where it reaches a new group of ``pool_chunks`` stored blocks (the pools of
        :meth:`epoch_order`; runs of blocks for a sorted index), each at most a pool's worth of rows."""
        first_seen = self._first_seen_blocks(index)
        starts = [*first_seen[:: self.pool_chunks].tolist(), index.shape[0]]
        most = self.chunk_size * self.pool_chunks
        return [
            index[start : min(start + most, stop)]
            for begin, stop in itertools.pairwise(starts)
            for start in range(begin, stop, most)
        ]

    def _first_seen_blocks(self, index: torch.Tensor) -> np.ndarray:
        """Positions in ``index`` where an entry of a stored block not seen before appears, ascending;
        computed :data:`_ENTRIES_PER_SCAN` entries at a time (temporaries of that size only)."""
        seen = np.zeros(self.n_cells // self.chunk_size + 1, dtype=bool)
        found = []
        for start in range(0, index.shape[0], _ENTRIES_PER_SCAN):
            part = index[start : start + _ENTRIES_PER_SCAN]
            blocks = torch.div(part, self.chunk_size, rounding_mode="floor").cpu().numpy()
            ids, first = np.unique(blocks, return_index=True)
            new = ~seen[ids]
            seen[ids[new]] = True
            found.append(first[new] + start)
        return np.sort(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)

    def _pools(self, windows: list[torch.Tensor]) -> Iterator[CellData]:
        """The cells of each window in turn, read ``prefetch`` windows ahead on a background thread."""
        ahead = default_prefetch(self.target_device) if self.prefetch is None else self.prefetch
        if ahead <= 0 or len(windows) == 1:
            yield from map(self.take, windows)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scamort-prefetch") as executor:
            pending: deque[Future[CellData]] = deque(
                executor.submit(self.take, w) for w in windows[: ahead + 1]
            )
            upcoming = iter(windows[ahead + 1 :])
            try:
                while pending:
                    pool = pending.popleft().result()
                    following = next(upcoming, None)
                    if following is not None:
                        pending.append(executor.submit(self.take, following))
                    yield pool
            finally:
                for future in pending:  # stopped early (e.g. a time budget): drop what was read ahead
                    future.cancel()

    def iterate(self, index: torch.Tensor, batch_size: int) -> Iterator[Minibatch]:
        """Minibatches over ``index`` in order, reading one pool of rows at a time (the next ``prefetch``
        pools in the background). A minibatch that spans two pools joins the end of one, kept in
        memory, to the start of the next: each pool is read once."""
        carry: CellData | None = None  # the cells of a minibatch begun in an earlier pool
        for pool in self._pools(self._windows(index)):
            start = 0
            if carry is not None:
                start = min(batch_size - carry.n_cells, pool.n_cells)
                carry = _concatenated(carry, pool.take(torch.arange(start, device=pool.device)))
                if carry.n_cells < batch_size:
                    continue
                yield carry.slice(0, batch_size)
            whole = start + (pool.n_cells - start) // batch_size * batch_size
            yield from _consecutive_batches(pool, start, whole, batch_size)
            rest = torch.arange(whole, pool.n_cells, device=pool.device)
            carry = pool.take(rest) if rest.numel() else None
        if carry is not None:
            yield carry.slice(0, carry.n_cells)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_prefetch(device: torch.device) -> int:
    """Pools to read ahead by default: one when a core is free for the reader thread (minibatches go
    to an accelerator, or there are more cores than torch's intra-op threads), else none."""
    return int(device.type != "cpu" or available_cores() > torch.get_num_threads())


def _consecutive_batches(pool: CellData, start: int, stop: int, batch_size: int) -> Iterator[Minibatch]:
    """Minibatches of cells ``start:stop`` of a pool that is already in order (slices, no copy)."""
    host_indptrs = {name: t.indptr.cpu().numpy() for name, t in pool.modalities.items()}
    for first in range(start, stop, batch_size):
        yield pool.slice(first, min(first + batch_size, stop), host_indptrs)


def _concatenated(first: CellData, second: CellData) -> CellData:
    """The cells of ``first`` then those of ``second`` (no feature masks: out-of-core data has none)."""

    def joined(a: ModalityTensors, b: ModalityTensors) -> ModalityTensors:
        return ModalityTensors(
            indptr=torch.cat([a.indptr, b.indptr[1:] + a.indptr[-1]]),
            indices=torch.cat([a.indices, b.indices]),
            values=torch.cat([a.values, b.values]),
            n_features=a.n_features,
            log_library=torch.cat([a.log_library, b.log_library]),
            log_factorial=torch.cat([a.log_factorial, b.log_factorial]),
            present=torch.cat([a.present, b.present]),
        )

    return CellData(
        modalities={name: joined(t, second.modalities[name]) for name, t in first.modalities.items()},
        batch_index=torch.cat([first.batch_index, second.batch_index]),
        categorical=torch.cat([first.categorical, second.categorical]),
        continuous=torch.cat([first.continuous, second.continuous]),
    )


#: Encoded cells as the model, training and inference read them: in memory or out of core (both give
#: ``n_cells``, ``device``, ``modalities``, ``cell_keys``, ``to``, ``epoch_order``, ``minibatch`` and
#: ``iterate``).
EncodedCells = CellData | BackedCellData
