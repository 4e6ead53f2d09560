"""Cells as tensors: per-modality CSR plus covariates, placed on a device once, gathered by index."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scamort.data.measured import MeasuredPatterns
from scamort.data.sparse_batch import SparseBatch
from scamort.errors import InputError

__all__ = [
    "CHANGED_COUNTS",
    "GATHER_ENTRIES",
    "CellData",
    "Minibatch",
    "ModalityBatch",
    "ModalityTensors",
    "cell_keys",
    "counts_checksum",
    "lgamma_plus_one",
    "refuse_changed_counts",
    "row_log_factorials",
]


#: Stored entries (over all modalities, on average) gathered at a time by :meth:`CellData.iterate`;
#: the block is rounded to whole minibatches.
GATHER_ENTRIES = 1 << 21


@dataclass(frozen=True)
class ModalityTensors:
    """One modality's counts for all cells, as CSR components.

    Attributes
    ----------
    indptr
        Row pointers, shape ``(n_cells + 1,)`` (int64).
    indices, values
        Column indices (int32 as encoded, int64 where built by other code) and counts (float32) of the
        nonzeros, shape ``(nnz,)``.
    n_features
        Number of columns.
    log_library
        Log of each cell's total count (at least 1), shape ``(n_cells,)``.
    log_factorial
        ``sum_g lgamma(x_g + 1)`` per cell, shape ``(n_cells,)``, in float64: it cancels against the
        other count-dependent terms of the likelihoods, which float32 cannot resolve for large counts.
    present
        Whether each cell was measured in this modality, shape ``(n_cells,)`` (bool).
    measured_table, measured_pattern
        Feature-level mask (None: every feature measured): distinct patterns of measured features
        ``(n_patterns, n_features)`` bool and each cell's pattern ``(n_cells,)`` int64. The counts
        hold no entries under the mask and ``log_library`` sums measured features only.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    n_features: int
    log_library: torch.Tensor
    log_factorial: torch.Tensor
    present: torch.Tensor
    measured_table: torch.Tensor | None = None
    measured_pattern: torch.Tensor | None = None

    @classmethod
    def from_csr(
        cls,
        counts: sp.csr_matrix,
        present: np.ndarray,
        measured: MeasuredPatterns | None = None,
        *,
        copy: bool = True,
    ) -> ModalityTensors:
        """Tensors of a validated CSR matrix ``(n_cells, n_features)``; ``measured`` (whose unmeasured
        entries must already be dropped from ``counts``) travels with them.

        The counts are held as float32 values and int32 column indices. With ``copy=False`` the tensors
        share a float32 canonical ``counts``' arrays instead of copying them (for a private matrix
        nothing else holds or writes). Per-cell sums are computed block by block, so the only arrays
        of the size of the counts are the tensors themselves.
        """
        if copy or counts.dtype != np.float32:
            counts = sp.csr_matrix(counts).astype(np.float32, copy=True)
        counts.sum_duplicates()
        values = counts.data
        log_factorial = row_log_factorials(counts)
        library = np.asarray(counts.sum(axis=1)).ravel()
        return cls(
            indptr=torch.as_tensor(counts.indptr.astype(np.int64)),
            indices=torch.from_numpy(counts.indices.astype(np.int32, copy=False)),
            values=torch.from_numpy(values),
            n_features=counts.shape[1],
            log_library=torch.tensor(np.log(np.maximum(library, 1.0)), dtype=torch.float32),
            log_factorial=torch.from_numpy(log_factorial),
            present=torch.as_tensor(np.asarray(present, dtype=bool)),
            measured_table=None if measured is None else torch.as_tensor(measured.table),
            measured_pattern=None if measured is None else torch.as_tensor(measured.pattern),
        )

    def measured_rows(self, start: int, stop: int) -> torch.Tensor | None:
        """The feature mask of rows ``start:stop``, ``(stop - start, n_features)`` bool, or None."""
        if self.measured_table is None or self.measured_pattern is None:
            return None
        return self.measured_table[self.measured_pattern[start:stop]]

    def take(self, index: torch.Tensor) -> ModalityTensors:
        """The rows ``index`` (shape ``(n,)``, on this device), in that order, as new CSR tensors.

        One vectorised gather; afterwards any contiguous run of rows is a cheap slice (:meth:`rows`).
        """
        start = self.indptr[index]
        length = self.indptr[index + 1] - start
        indptr = torch.zeros(index.shape[0] + 1, dtype=torch.int64, device=index.device)
        torch.cumsum(length, 0, out=indptr[1:])
        position = torch.repeat_interleave(start - indptr[:-1], length)
        position += torch.arange(position.shape[0], device=index.device)  # in place: one entry-sized temp
        return ModalityTensors(
            indptr=indptr,
            indices=self.indices[position],
            values=self.values[position],
            n_features=self.n_features,
            log_library=self.log_library[index],
            log_factorial=self.log_factorial[index],
            present=self.present[index],
            measured_table=self.measured_table,
            measured_pattern=None if self.measured_pattern is None else self.measured_pattern[index],
        )

    def rows(self, start: int, stop: int, host_indptr: np.ndarray | None = None) -> SparseBatch:
        """Rows ``start:stop`` as a :class:`SparseBatch` (slices, no copy of the counts).

        ``host_indptr`` is a host copy of ``indptr``; passing it avoids a device sync per batch.
        """
        bounds = self.indptr if host_indptr is None else host_indptr
        first, last = int(bounds[start]), int(bounds[stop])
        offsets = self.indptr[start:stop] - first
        lengths = self.indptr[start + 1 : stop + 1] - self.indptr[start:stop]
        row = torch.repeat_interleave(
            torch.arange(stop - start, device=offsets.device), lengths, output_size=last - first
        )
        return SparseBatch(
            row=row,
            col=self.indices[first:last].long(),
            values=self.values[first:last],
            row_offsets=offsets,
            n_features=self.n_features,
            log_factorial=self.log_factorial[start:stop],
        )

    def to(self, device: torch.device) -> ModalityTensors:
        """A copy on ``device``."""
        return replace(
            self,
            indptr=self.indptr.to(device),
            indices=self.indices.to(device),
            values=self.values.to(device),
            log_library=self.log_library.to(device),
            log_factorial=self.log_factorial.to(device),
            present=self.present.to(device),
            measured_table=None if self.measured_table is None else self.measured_table.to(device),
            measured_pattern=None if self.measured_pattern is None else self.measured_pattern.to(device),
        )


#: Stored entries handled at a time when computing per-cell sums (bounds the temporary arrays).
_ENTRIES_PER_BLOCK = 1 << 18


def _row_blocks(indptr: np.ndarray, n_entries: int = _ENTRIES_PER_BLOCK):
    """Yield ``(start, stop)`` row ranges of about ``n_entries`` stored entries each (at least one row)."""
    n_rows, start = indptr.shape[0] - 1, 0
    while start < n_rows:
        stop = int(np.searchsorted(indptr, indptr[start] + n_entries, side="right")) - 1
        stop = min(max(stop, start + 1), n_rows)
        yield start, stop
        start = stop


def row_log_factorials(counts: sp.csr_matrix) -> np.ndarray:
    """``sum_g lgamma(x_g + 1)`` of each row of a CSR matrix, ``(n_rows,)`` float64, summed in stored
    order a block of rows at a time (the same value for a row wherever it is stored)."""
    log_factorial = np.zeros(counts.shape[0], dtype=np.float64)
    for start, stop in _row_blocks(counts.indptr):
        first, last = counts.indptr[start], counts.indptr[stop]
        row_of_entry = np.repeat(np.arange(stop - start), np.diff(counts.indptr[start : stop + 1]))
        log_factorial[start:stop] = np.bincount(
            row_of_entry,
            weights=lgamma_plus_one(counts.data[first:last].astype(np.float64)),
            minlength=stop - start,
        )
    return log_factorial


#: Counts below this whose ``lgamma(x + 1)`` is looked up in a table instead of computed.
_TABLED_COUNTS = 4096


@functools.cache
def _log_factorial_table() -> np.ndarray:
    from scipy.special import gammaln

    return gammaln(np.arange(_TABLED_COUNTS, dtype=np.float64) + 1.0)


def lgamma_plus_one(values: np.ndarray) -> np.ndarray:
    """``lgamma(x + 1)`` of float64 ``values`` ``(n,)``: whole counts below :data:`_TABLED_COUNTS` from a
    table of ``scipy.special.gammaln`` (the same values, bitwise, many times faster), the rest computed."""
    from scipy.special import gammaln

    whole = values.astype(np.int64)
    tabled = (whole == values) & (whole >= 0) & (whole < _TABLED_COUNTS)
    if tabled.all():
        return _log_factorial_table()[whole]
    out = gammaln(values + 1.0)
    out[tabled] = _log_factorial_table()[whole[tabled]]
    return out


@dataclass(frozen=True)
class ModalityBatch:
    """One modality of a minibatch: counts ``(batch, n_features)``, log library and presence ``(batch,)``,
    and the feature mask ``(batch, n_features)`` bool (None: every feature measured)."""

    counts: SparseBatch
    log_library: torch.Tensor
    present: torch.Tensor
    measured: torch.Tensor | None = None


@dataclass(frozen=True)
class Minibatch:
    """A minibatch of cells.

    Attributes
    ----------
    modalities
        Modality name -> its counts, library and presence.
    batch_index
        Batch code per cell, shape ``(batch,)`` (int64; zeros without a batch key).
    categorical
        Codes of the covariates injected into decoders, shape ``(batch, n_categorical)``.
    continuous
        Continuous covariates, shape ``(batch, n_continuous)``.
    labels
        Label codes of a model with labels, shape ``(batch,)`` int64 (-1: unlabelled), or None.
    """

    modalities: dict[str, ModalityBatch]
    batch_index: torch.Tensor
    categorical: torch.Tensor
    continuous: torch.Tensor
    labels: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """Number of cells."""
        return self.batch_index.shape[0]


#: Cell names hashed at a time by :func:`cell_keys`.
_NAMES_PER_BLOCK = 1 << 16


def cell_keys(names: Sequence[str]) -> torch.Tensor:
    """Stable non-negative 31-bit ids of cells from their names, shape ``(n_cells,)`` int64.

    pandas' fixed-key SipHash of each name: the same name gives the same id in any order, run or
    platform (cells sharing a name share an id).

    Parameters
    ----------
    names
        Cell names (``obs_names``).
    """
    keys = np.empty(len(names), dtype=np.int64)
    for start in range(0, len(names), _NAMES_PER_BLOCK):  # bounded temporaries (strings, hashes)
        block = pd.Index(list(map(str, names[start : start + _NAMES_PER_BLOCK])))
        hashed = pd.util.hash_pandas_object(block, index=False).to_numpy()
        keys[start : start + len(block)] = hashed & np.uint64(0x7FFFFFFF)
    return torch.from_numpy(keys)


@dataclass(frozen=True)
class CellData:
    """All cells of one AnnData/MuData as tensors (see :func:`scamort.data.encode.encode_cells`).

    ``cell_keys`` ``(n_cells,)`` int64, when set, are stable per-cell ids derived from the cell names
    (:func:`cell_keys`): per-cell random draws keyed on them do not depend on the cells' order or on
    which other cells are present. Only the encoded data carries them; gathered subsets (``take``,
    minibatches) do not need them. ``labels`` ``(n_cells,)`` int64 are the label codes a model with
    labels trains on (-1: unlabelled; None: no labels), carried into subsets and minibatches.
    """

    modalities: dict[str, ModalityTensors]
    batch_index: torch.Tensor
    categorical: torch.Tensor
    continuous: torch.Tensor
    cell_keys: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return self.batch_index.shape[0]

    @property
    def device(self) -> torch.device:
        """Where the tensors live."""
        return self.batch_index.device

    def to(self, device: torch.device | str) -> CellData:
        """A copy on ``device`` (the same object if already there)."""
        device = torch.device(device)
        if self.device == device:
            return self
        return CellData(
            modalities={k: v.to(device) for k, v in self.modalities.items()},
            batch_index=self.batch_index.to(device),
            categorical=self.categorical.to(device),
            continuous=self.continuous.to(device),
            cell_keys=None if self.cell_keys is None else self.cell_keys.to(device),
            labels=None if self.labels is None else self.labels.to(device),
        )

    def restricted_to(self, names: Sequence[str]) -> CellData:
        """The same cells with every modality not in ``names`` marked unmeasured in all of them (its
        expert leaves the product and its reconstruction term the ELBO); the counts are shared."""
        unmeasured = {
            name: replace(tensors, present=torch.zeros_like(tensors.present))
            for name, tensors in self.modalities.items()
            if name not in names
        }
        return replace(self, modalities={**self.modalities, **unmeasured})

    def take(self, index: torch.Tensor) -> CellData:
        """The cells at positions ``index`` (shape ``(n,)``, on this device), in that order."""
        return CellData(
            modalities={name: tensors.take(index) for name, tensors in self.modalities.items()},
            batch_index=self.batch_index[index],
            categorical=self.categorical[index],
            continuous=self.continuous[index],
            labels=None if self.labels is None else self.labels[index],
        )

    def slice(self, start: int, stop: int, host_indptrs: dict[str, np.ndarray] | None = None) -> Minibatch:
        """Cells ``start:stop`` as a minibatch (views of the tensors; cheap).

        ``host_indptrs`` (modality -> host copy of its ``indptr``) avoids device syncs.
        """
        host_indptrs = host_indptrs or {}
        return Minibatch(
            modalities={
                name: ModalityBatch(
                    counts=tensors.rows(start, stop, host_indptrs.get(name)),
                    log_library=tensors.log_library[start:stop],
                    present=tensors.present[start:stop],
                    measured=tensors.measured_rows(start, stop),
                )
                for name, tensors in self.modalities.items()
            },
            batch_index=self.batch_index[start:stop],
            categorical=self.categorical[start:stop],
            continuous=self.continuous[start:stop],
            labels=None if self.labels is None else self.labels[start:stop],
        )

    def epoch_order(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``index`` in a random order (one training epoch)."""
        return index[torch.randperm(index.shape[0], generator=generator, device=generator.device)]

    def minibatch(self, index: torch.Tensor) -> Minibatch:
        """Cells at positions ``index`` (shape ``(batch,)``, on this data's device)."""
        return self.take(index).slice(0, index.shape[0])

    def iterate(self, index: torch.Tensor, batch_size: int):
        """Yield minibatches over ``index`` in order.

        The cells are gathered (one vectorised :meth:`take`) a block of about :data:`GATHER_ENTRIES`
        stored entries (at the cells' mean) at a time, in whole minibatches, then sliced: an epoch's
        reordered copy of the counts never exists whole, and the device syncs once per block, not per
        minibatch.
        """
        entries = sum(t.indices.shape[0] for t in self.modalities.values())
        per_cell = max(1.0, entries / max(self.n_cells, 1))
        block = batch_size * max(1, int(GATHER_ENTRIES / (per_cell * batch_size)))
        for first in range(0, index.shape[0], block):
            ordered = self.take(index[first : first + block])
            host_indptrs = {name: t.indptr.cpu().numpy() for name, t in ordered.modalities.items()}
            for start in range(0, ordered.n_cells, batch_size):
                yield ordered.slice(start, min(start + batch_size, ordered.n_cells), host_indptrs)


#: The refusal of counts changed in place after a model encoded them.
CHANGED_COUNTS = (
    "The counts of the model's AnnData were changed in place after Model(adata) (scamort reads them "
    "without a copy); restore them, or build a new Model on the changed data."
)


def counts_checksum(data: object) -> tuple[float, ...] | None:
    """A cheap fingerprint of in-memory counts (per modality: the float64 sum of the values, the sum of
    the column indices and the number of stored entries), or None for data that are not
    :class:`CellData`.

    The tensors may share the user's own CSR arrays (no copy is made of a canonical float32 matrix),
    so a model compares this before it uses them, to refuse counts changed in place since encoding.
    """
    if not isinstance(data, CellData):
        return None
    out: list[float] = []
    for tensors in data.modalities.values():
        out += [_sum(tensors.values, np.float64), _sum(tensors.indices, np.int64), tensors.indices.numel()]
    return tuple(out)


def _sum(tensor: torch.Tensor, dtype: type) -> float:
    """``tensor``'s sum in ``dtype``, reduced where it lives: numpy's (deterministic, thread-count
    independent) pairwise sum on a zero-copy view of a CPU tensor, torch's on a device (no host copy)."""
    if tensor.device.type == "cpu":
        return float(np.sum(tensor.numpy(), dtype=dtype))
    return float(torch.sum(tensor, dtype=torch.float64 if dtype is np.float64 else torch.int64).item())


def refuse_changed_counts(data: object, checksum: tuple[float, ...] | None) -> None:
    """Raise :class:`~scamort.errors.InputError` (:data:`CHANGED_COUNTS`) when ``data``'s
    :func:`counts_checksum` differs from ``checksum``, the one taken when the model encoded them."""
    if counts_checksum(data) != checksum:
        raise InputError(CHANGED_COUNTS)
