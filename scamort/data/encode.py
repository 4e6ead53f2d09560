"""AnnData -> :class:`CellData`, driven by a :class:`Registry` (the same path for training and query data)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch

from scamort.data.backed import BackedCellData, is_out_of_core
from scamort.data.cell_data import CellData, ModalityTensors, cell_keys
from scamort.data.measured import MeasuredPatterns, drop_unmeasured
from scamort.data.query_reading import read_query_modalities
from scamort.data.reading import align_features
from scamort.data.registry import Registry, category_codes
from scamort.data.sources import ModalityCounts, read_modalities
from scamort.data.validation import check_continuous_column
from scamort.errors import InputError

__all__ = ["encode_cells", "refuse_empty_cells"]


def refuse_empty_cells(
    counts: dict[str, sp.csr_matrix], present: dict[str, np.ndarray], cells: ad.AnnData
) -> None:
    """Refuse cells whose every measured modality has zero total counts."""
    has_counts = np.zeros(cells.n_obs, dtype=bool)
    for name, matrix in counts.items():
        has_counts |= present[name] & (np.asarray(matrix.sum(axis=1)).ravel() > 0)
    n_empty = int(np.count_nonzero(~has_counts))
    if n_empty:
        example = cells.obs_names[np.flatnonzero(~has_counts)[0]]
        raise InputError(
            f"{n_empty} cells have zero total counts (e.g. {example!r}); remove them first, "
            "e.g. sc.pp.filter_cells(adata, min_counts=1)."
        )


def encode_cells(
    data: ad.AnnData, registry: Registry, read: dict[str, ModalityCounts] | None = None
) -> CellData | BackedCellData:
    """Validate ``data`` (AnnData or MuData) against the registry and copy it into tensors (CPU).

    Features are aligned by name to the model's order; unseen categories, missing features or keys
    raise :class:`InputError`. ``data`` is only read. ``read`` passes counts already read by
    :func:`read_modalities` (so the constructor reads the data once). Backed or on-disk data (see
    :func:`~scamort.data.out_of_core.is_out_of_core`) is validated chunk by chunk and wrapped as
    :class:`BackedCellData`; its counts are never all in memory.
    """
    if is_out_of_core(data, {m.name: m.modality for m in registry.modalities}):
        return BackedCellData.create(data, registry, _to_cell_data(data, registry, {}, {}))
    if read is None and registry.query_alignment:
        read = read_query_modalities(data, registry)
    elif read is None:
        read = read_modalities(data, {m.name: m.modality for m in registry.modalities})
    counts: dict[str, sp.csr_matrix] = {}
    present: dict[str, np.ndarray] = {}
    measured: dict[str, MeasuredPatterns | None] = {}
    for entry in registry.modalities:
        source = read[entry.name]
        matrix = align_features(source.counts, source.feature_names, entry.feature_names, where=source.where)
        patterns = source.measured
        if patterns is not None:
            patterns = patterns.aligned(source.feature_names, entry.feature_names).for_present(source.present)
            matrix = drop_unmeasured(matrix, patterns)
        # An all-measured mask is no mask: the model is then exactly the unmasked one.
        measured[entry.name] = None if patterns is None or patterns.all_measured else patterns
        if entry.modality.binarize:
            matrix = matrix.copy()
            matrix.data = (matrix.data > 0).astype(np.float32)
            matrix.eliminate_zeros()
        counts[entry.name] = matrix
        present[entry.name] = source.present
    refuse_empty_cells(counts, present, data)
    return _to_cell_data(data, registry, counts, present, measured)


def _to_cell_data(
    adata: ad.AnnData,
    registry: Registry,
    counts: dict[str, sp.csr_matrix],
    present: dict[str, np.ndarray],
    measured: dict[str, MeasuredPatterns | None] | None = None,
) -> CellData:
    n = adata.n_obs
    measured = measured or {}
    if registry.batch_key is not None:
        batch = category_codes(adata, registry.batch_key, registry.batch_categories, "batch_key")
    else:
        batch = np.zeros(n, dtype=np.int64)
    categorical = [
        category_codes(adata, key, cats, "Categorical covariate")
        for key, cats in registry.categorical_covariates
    ]
    if registry.batch_key is not None:
        categorical.insert(0, batch)
    continuous = [
        (check_continuous_column(adata, key, "Continuous covariate") - mean) / sd
        for key, (mean, sd) in zip(
            registry.continuous_covariate_keys, registry.continuous_covariate_scaling, strict=True
        )
    ]
    return CellData(
        modalities={
            # each matrix is scamort's own copy (read_counts), so the tensors may keep its arrays
            name: ModalityTensors.from_csr(matrix, present[name], measured.get(name), copy=False)
            for name, matrix in counts.items()
        },
        batch_index=torch.as_tensor(batch),
        categorical=torch.as_tensor(np.stack(categorical, 1) if categorical else np.zeros((n, 0))).long(),
        continuous=torch.as_tensor(
            np.stack(continuous, 1) if continuous else np.zeros((n, 0)), dtype=torch.float32
        ),
        cell_keys=cell_keys(adata.obs_names),
    )
