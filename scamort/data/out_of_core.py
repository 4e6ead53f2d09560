"""Opening every modality of a backed or on-disk AnnData/MuData for out-of-core reading.

Data are read out of core when the AnnData or MuData is backed (``anndata.read_h5ad(..., backed="r")``,
``mudata.read_h5mu(..., backed=True)``) or when a modality's counts are an on-disk dataset (e.g. a Zarr
store opened with :func:`scamort.scale.open_zarr`). Each modality's counts (``.X``, a layer or ``.obsm``)
are then validated in one pass of ``chunk_size`` rows at a time; what is kept for every cell is a few
numbers: whether it was measured in each modality and its library size there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import anndata as ad
import numpy as np
import torch

from scamort.data.cell_data import row_log_factorials
from scamort.data.disk import RowSource, is_on_disk
from scamort.data.modality import Modality
from scamort.data.reading import feature_positions, locate_counts
from scamort.data.registry import Registry
from scamort.data.sources import _present_flag, is_mudata
from scamort.data.validation import check_counts
from scamort.errors import InputError

__all__ = ["DiskModality", "ModalitySummary", "is_out_of_core", "open_modalities", "stored_features"]


@dataclass(frozen=True)
class ModalitySummary:
    """What is held in memory of one out-of-core modality, for every cell.

    Attributes
    ----------
    n_features
        Number of features.
    log_library
        Log of each cell's total count (at least 1), ``(n_cells,)`` float32.
    present
        Whether each cell was measured in this modality, ``(n_cells,)`` bool.
    log_factorial
        ``sum_g lgamma(x_g + 1)`` per cell, ``(n_cells,)`` float64 (as
        :meth:`~scamort.data.cell_data.ModalityTensors.from_csr` computes it), so reads skip it.
    measured_table, measured_pattern
        Always None: out-of-core modalities have no feature mask.
    """

    n_features: int
    log_library: torch.Tensor
    present: torch.Tensor
    log_factorial: torch.Tensor
    measured_table: None = None
    measured_pattern: None = None

    def to(self, device: torch.device) -> ModalitySummary:
        """A copy on ``device``."""
        return replace(
            self,
            log_library=self.log_library.to(device),
            present=self.present.to(device),
            log_factorial=self.log_factorial.to(device),
        )


@dataclass(frozen=True)
class DiskModality:
    """One modality read from disk.

    Attributes
    ----------
    name
        The modality's name.
    source
        Its stored rows.
    member_rows
        For a MuData, the row of each cell in the modality's own AnnData ``(n_cells,)`` int64, -1 where
        the cell is absent from it; None when rows are the cells.
    summary
        Presence and library size of every cell.
    """

    name: str
    source: RowSource
    member_rows: np.ndarray | None
    summary: ModalitySummary


def _members(data: Any, name: str) -> tuple[ad.AnnData, str]:
    if is_mudata(data):
        if name not in data.mod:
            raise InputError(f"Modality {name!r} is not in the MuData (it has {', '.join(data.mod)}).")
        return data.mod[name], f"mdata.mod[{name!r}]"
    assert isinstance(data, ad.AnnData)
    return data, "adata"


def is_out_of_core(data: Any, modalities: Mapping[str, Modality]) -> bool:
    """Whether ``data`` is read out of core: a backed AnnData or MuData, or counts stored on disk."""
    if (isinstance(data, ad.AnnData) or is_mudata(data)) and bool(getattr(data, "isbacked", False)):
        return True
    for name, modality in modalities.items():
        if is_mudata(data) and name not in data.mod:
            return False  # refused with a clear message by the in-memory path
        member, container = _members(data, name)
        try:
            raw, _, _ = locate_counts(member, modality, name, container)
        except InputError:
            return False  # the in-memory path says what is wrong
        if is_on_disk(raw):
            return True
    return False


def _refuse_masks(modalities: Mapping[str, Modality]) -> None:
    for name, modality in modalities.items():
        if modality.measured_key is not None:
            raise InputError(
                f"Modality {name!r}: out-of-core (backed) data does not read feature masks (measured_key); "
                "load the data into memory (adata.to_memory())."
            )


def stored_features(data: Any, modalities: Mapping[str, Modality]) -> dict[str, list[str]]:
    """Each modality's feature names, read without reading any counts."""
    _refuse_masks(modalities)
    out = {}
    for name, modality in modalities.items():
        member, container = _members(data, name)
        out[name] = locate_counts(member, modality, name, container)[1]
    return out


def _scan(
    source: RowSource, member: ad.AnnData, names: list[str], binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validate every stored row, ``chunk_size`` at a time; return each row's total count (float32
    values) and ``sum_g lgamma(x_g + 1)`` (float64) after the model's reading (columns, binarize),
    ``(n_rows,)`` each."""
    library = np.zeros(source.n_rows, dtype=np.float32)
    log_factorial = np.zeros(source.n_rows)
    for start in range(0, source.n_rows, source.chunk_size):
        stop = min(start + source.chunk_size, source.n_rows)
        block = source.block(start, stop)
        check_counts(
            block, where=source.where, cells=member.obs_names[start:stop], features=names, binary=binary
        )
        counts = source.counts(block)
        library[start:stop] = np.asarray(counts.sum(axis=1)).ravel()
        log_factorial[start:stop] = row_log_factorials(counts)
    return library, log_factorial


def _member_rows(data: Any, member: ad.AnnData, name: str) -> np.ndarray | None:
    if not is_mudata(data):
        return None
    obs_names = data.obs_names
    rows = obs_names.get_indexer(member.obs_names)
    if (rows < 0).any():
        raise InputError(
            f"Modality {name!r} has cells that are not in the MuData's obs; call mdata.update()."
        )
    member_rows = np.full(len(obs_names), -1, dtype=np.int64)
    member_rows[rows] = np.arange(len(rows))
    if np.array_equal(member_rows, np.arange(len(obs_names))):
        return None
    return member_rows


def _open(
    data: Any, name: str, modality: Modality, expected: list[str], chunk_size: int
) -> tuple[DiskModality, np.ndarray]:
    """The opened modality and which cells have a nonzero count in it ``(n_cells,)`` bool."""
    member, container = _members(data, name)
    raw, names, where = locate_counts(member, modality, name, container)
    if (member.n_obs == 0 and not is_mudata(data)) or len(names) == 0:
        raise InputError(
            f"{where} is empty ({member.n_obs} cells × {len(names)} features); nothing to model."
        )
    columns = feature_positions(names, expected, where=where)
    where = f"{where} (backed)" if is_on_disk(raw) else where
    source = RowSource(raw, where, columns, modality.binarize, chunk_size)
    library, log_factorial = _scan(source, member, names, binary=modality.is_binary and not modality.binarize)
    member_rows = _member_rows(data, member, name)
    n_cells = int(data.n_obs)
    present = np.ones(n_cells, dtype=bool) if member_rows is None else member_rows >= 0
    if member_rows is not None:
        library = np.where(present, library[np.maximum(member_rows, 0)], np.float32(0.0))
        log_factorial = np.where(present, log_factorial[np.maximum(member_rows, 0)], 0.0)
    if modality.present_key is not None:
        present &= _present_flag(data.obs, modality.present_key, name)
    summary = ModalitySummary(
        n_features=len(expected),
        # as ModalityTensors.from_csr computes it: the float32 total, its float32 log
        log_library=torch.as_tensor(np.log(np.maximum(library, np.float32(1.0)))),
        present=torch.as_tensor(present),
        log_factorial=torch.as_tensor(log_factorial),
    )
    return DiskModality(name, source, member_rows, summary), present & (library > 0)


def open_modalities(data: Any, registry: Registry, chunk_size: int = 8192) -> tuple[DiskModality, ...]:
    """Validate and open every modality of ``registry`` in ``data`` for reading in chunks.

    Raises
    ------
    InputError
        For unreadable or invalid counts, features the model lacks, cells with no modality or with zero
        total counts in every modality they have.
    """
    _refuse_masks({m.name: m.modality for m in registry.modalities})
    if is_mudata(data) and not data.obs_names.is_unique:
        repeated = data.obs_names[data.obs_names.duplicated()][0]
        raise InputError(
            f"The MuData has duplicated cell names (e.g. {repeated!r}); its modalities are paired by name, "
            "so make them unique first (e.g. mdata.obs_names_make_unique())."
        )
    results = [
        _open(data, entry.name, entry.modality, list(entry.feature_names), chunk_size)
        for entry in registry.modalities
    ]
    opened = tuple(modality for modality, _ in results)
    obs_names = data.obs_names
    measured = np.logical_or.reduce([m.summary.present.numpy() for m in opened])
    if not measured.all():
        example = obs_names[np.flatnonzero(~measured)[0]]
        raise InputError(
            f"{int((~measured).sum())} cells (e.g. {example!r}) are missing every modality; drop them."
        )
    has_counts = np.logical_or.reduce([nonempty for _, nonempty in results])
    if not has_counts.all():
        example = obs_names[np.flatnonzero(~has_counts)[0]]
        raise InputError(
            f"{int((~has_counts).sum())} cells have zero total counts (e.g. {example!r}); remove them first, "
            "e.g. sc.pp.filter_cells(adata, min_counts=1)."
        )
    return opened
