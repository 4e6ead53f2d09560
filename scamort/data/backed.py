"""Out-of-core cells: counts stay in a backed ``.h5ad`` and are read in shuffled chunks of rows.

Host memory is bounded by the chunk pool (``chunk_size × pool_chunks`` rows), whatever the number of
cells: per-cell covariates (a few integers per cell) are all that is held for every cell. The model, the
loop and the queries are the same as in memory; only the order of cells within an epoch differs (blocks of
consecutive cells are shuffled, then cells within a pool of blocks).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch

from scamort.data.categories import refuse_missing_names
from scamort.data.cell_data import CellData, Minibatch, ModalityTensors
from scamort.data.registry import Registry
from scamort.data.validation import check_counts
from scamort.errors import InputError

__all__ = ["BackedCellData", "EncodedCells", "check_backed_counts", "is_backed"]

CPU = torch.device("cpu")


def is_backed(data: object) -> bool:
    """Whether ``data`` is an AnnData opened in backed mode."""
    return isinstance(data, ad.AnnData) and data.isbacked


def _row_blocks(n_rows: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n_rows, size):
        yield start, min(start + size, n_rows)


def _has_x(adata: ad.AnnData) -> bool:
    """Whether a backed file has an ``X`` (anndata raises h5py's KeyError when it is absent)."""
    try:
        return adata.X is not None
    except KeyError:
        return False


def check_backed_counts(adata: ad.AnnData, chunk_size: int = 16_384, binary: bool = False) -> list[str]:
    """Validate a backed ``.X`` chunk by chunk (never all rows at once); return the feature names.

    Raises :class:`InputError` for non-integer, negative or non-finite counts and for empty cells.
    """
    if not _has_x(adata):
        raise InputError(
            f"The backed file {adata.filename} has no X (its counts must be in X for out-of-core "
            "training); write the counts to X, or read the file into memory and pass layer=."
        )
    refuse_missing_names(adata.var_names, "adata.var_names", "name every feature")
    features = list(map(str, adata.var_names))
    if adata.n_obs == 0 or not features:
        raise InputError(
            f"adata.X (backed) is empty ({adata.n_obs} cells × {len(features)} features); nothing to model."
        )
    n_empty, example = 0, None
    for start, stop in _row_blocks(adata.n_obs, chunk_size):
        block = sp.csr_matrix(adata.X[start:stop])
        cells = adata.obs_names[start:stop]
        check_counts(block, where="adata.X (backed)", cells=cells, features=features, binary=binary)
        empty = np.flatnonzero(np.asarray(block.sum(axis=1)).ravel() == 0)
        if empty.size and example is None:
            example = cells[empty[0]]
        n_empty += empty.size
    if n_empty:
        raise InputError(
            f"{n_empty} cells have zero total counts (e.g. {example!r}); remove them first, "
            "e.g. sc.pp.filter_cells(adata, min_counts=1)."
        )
    return features


@dataclass(frozen=True)
class BackedCellData:
    """Cells of a backed AnnData (one modality, in ``.X``), read on demand in chunks.

    Offers what training and the queries use from :class:`CellData`: ``n_cells``, ``device``, ``to``,
    ``epoch_order``, ``iterate`` and ``minibatch``.

    Attributes
    ----------
    adata
        The backed AnnData (only read).
    covariates
        The per-cell covariates of all cells, as a :class:`CellData` without counts.
    modality
        Name of the one modality.
    chunk_size, pool_chunks
        Rows per read, and blocks shuffled together in one pool.
    """

    adata: ad.AnnData
    covariates: CellData
    modality: str
    chunk_size: int = 8192
    pool_chunks: int = 4
    target_device: torch.device = CPU

    binarize: bool = False

    @staticmethod
    def check_registry(registry: Registry) -> None:
        """Refuse layouts the out-of-core path cannot read (before any counts are read)."""
        if len(registry.modalities) != 1 or registry.modalities[0].modality.source != "X":
            raise InputError(
                "Backed (out-of-core) AnnData works with a single modality read from .X; load the data "
                "into memory (adata.to_memory()) for layers, obsm or several modalities."
            )
        if registry.modalities[0].modality.measured_key is not None:
            raise InputError(
                "Backed (out-of-core) AnnData does not read feature masks (measured_key); load the data "
                "into memory (adata.to_memory())."
            )

    @classmethod
    def create(cls, adata: ad.AnnData, registry: Registry, covariates: CellData) -> BackedCellData:
        """Wrap ``adata`` after its counts were validated (see :func:`check_backed_counts`)."""
        cls.check_registry(registry)
        entry = registry.modalities[0]
        return cls(adata, covariates, entry.name, binarize=entry.modality.binarize)

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return self.adata.n_obs

    @property
    def cell_keys(self) -> torch.Tensor | None:
        """Stable per-cell ids from the cell names (see :class:`CellData`)."""
        return self.covariates.cell_keys

    @property
    def device(self) -> torch.device:
        """Where minibatches are placed."""
        return self.target_device

    @property
    def modalities(self) -> dict[str, ModalityTensors]:
        """Not available out of core: all counts would have to be read."""
        raise InputError(
            "This query needs all counts in memory; load the backed AnnData with adata.to_memory()."
        )

    def to(self, device: torch.device | str) -> BackedCellData:
        """The same data, with minibatches placed on ``device``."""
        return BackedCellData(
            self.adata,
            self.covariates.to(device),
            self.modality,
            self.chunk_size,
            self.pool_chunks,
            torch.device(device),
            self.binarize,
        )

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

    def _read(self, rows: np.ndarray) -> CellData:
        """The cells at positions ``rows`` (any order) as an in-memory :class:`CellData` on the device."""
        unique = np.unique(rows)
        parts = []
        # Contiguous reads of only the chunk_size-aligned blocks that hold a wanted row.
        for block_id in np.unique(unique // self.chunk_size):
            start = int(block_id) * self.chunk_size
            stop = min(start + self.chunk_size, self.adata.n_obs)
            block = sp.csr_matrix(self.adata.X[start:stop])
            wanted = unique[(unique >= start) & (unique < stop)] - start
            parts.append(block[wanted])
        counts = sp.vstack(parts).tocsr()[np.searchsorted(unique, rows)]
        if self.binarize:
            counts.data = (counts.data > 0).astype(np.float32)
            counts.eliminate_zeros()
        positions = torch.as_tensor(rows, device=self.device)
        tensors = ModalityTensors.from_csr(counts, np.ones(len(rows), dtype=bool)).to(self.device)
        return CellData(
            modalities={self.modality: tensors},
            batch_index=self.covariates.batch_index[positions],
            categorical=self.covariates.categorical[positions],
            continuous=self.covariates.continuous[positions],
            labels=None if self.covariates.labels is None else self.covariates.labels[positions],
        )

    def minibatch(self, index: torch.Tensor) -> Minibatch:
        """Cells at positions ``index`` as one minibatch."""
        return self._read(index.cpu().numpy()).slice(0, index.shape[0])

    def iterate(self, index: torch.Tensor, batch_size: int) -> Iterator[Minibatch]:
        """Minibatches over ``index`` in order, reading one pool of rows at a time."""
        window = self.chunk_size * self.pool_chunks
        window -= window % batch_size or 0
        window = max(window, batch_size)
        for start in range(0, index.shape[0], window):
            chunk = index[start : start + window]
            yield from self._read(chunk.cpu().numpy()).iterate(
                torch.arange(chunk.shape[0], device=self.device), batch_size
            )


#: Encoded cells as the model, training and inference read them: in memory or out of core (both give
#: ``n_cells``, ``device``, ``modalities``, ``cell_keys``, ``to``, ``epoch_order``, ``minibatch`` and
#: ``iterate``).
EncodedCells = CellData | BackedCellData
