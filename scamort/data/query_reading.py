"""Reading a query's modalities for a query model (:meth:`scamort.Model.load_query_data`).

A query is read against the reference's features, by name: a reference feature the query lacks is
*unmeasured* in every query cell (a feature mask, :mod:`scamort.data.measured`: left out of the
likelihood, the encoder and the library size, never read as a zero), a query feature the reference
lacks is dropped, and a modality the query lacks (e.g. protein for an RNA-only AnnData) is absent in
every cell. A registry with ``query_alignment`` reads data this way (:func:`scamort.data.encode_cells`).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scamort.data.measured import MeasuredPatterns
from scamort.data.modality import Modality
from scamort.data.reading import refuse_duplicated_names
from scamort.data.registry import ModalityRegistry, Registry
from scamort.data.sources import ModalityCounts, is_mudata, read_modalities

__all__ = ["query_feature_names", "read_query_modalities"]


def query_feature_names(data: ad.AnnData, name: str, modality: Modality) -> list[str] | None:
    """The feature names ``data`` holds for modality ``name`` (None: it lacks the modality).

    Read from the names alone (no counts): ``var_names``, an ``.obsm`` DataFrame's columns, or
    ``"{name}_{i}"`` positions for an ``.obsm`` array.
    """
    if is_mudata(data):
        if name not in data.mod:
            return None
        data = data.mod[name]
    if modality.obsm_key is None:
        return list(map(str, data.var_names))
    if modality.obsm_key not in data.obsm:
        return None
    table = data.obsm[modality.obsm_key]
    if isinstance(table, pd.DataFrame):
        return [str(column) for column in table.columns]
    return [f"{name}_{i}" for i in range(table.shape[1])]


def _absent(entry: ModalityRegistry, n_cells: int) -> ModalityCounts:
    """A modality no cell of the query has."""
    counts = sp.csr_matrix((n_cells, entry.n_features), dtype=np.float32)
    return ModalityCounts(counts, list(entry.feature_names), "(absent)", np.zeros(n_cells, dtype=bool))


def _aligned(source: ModalityCounts, entry: ModalityRegistry) -> ModalityCounts:
    """``source`` with columns in the reference's order: missing ones empty and unmeasured."""
    expected = list(entry.feature_names)
    if source.feature_names == expected:
        return source
    index = pd.Index(source.feature_names)
    refuse_duplicated_names(index, source.where)
    positions = index.get_indexer(pd.Index(expected))
    held = positions >= 0
    counts = sp.hstack([source.counts, sp.csr_matrix((source.counts.shape[0], 1), dtype=np.float32)])
    counts = sp.csr_matrix(counts)[:, np.where(held, positions, source.counts.shape[1])]
    counts.sort_indices()
    old = source.measured or MeasuredPatterns(
        np.ones((1, len(index)), dtype=bool), np.zeros(source.counts.shape[0], dtype=np.int64)
    )
    table = np.zeros((old.table.shape[0], len(expected)), dtype=bool)
    table[:, held] = old.table[:, positions[held]]
    measured = MeasuredPatterns(table, old.pattern)
    return ModalityCounts(
        sp.csr_matrix(counts, dtype=np.float32), expected, source.where, source.present, measured
    )


def read_query_modalities(data: ad.AnnData, registry: Registry) -> dict[str, ModalityCounts]:
    """Every modality of ``registry`` as read from the query ``data``, aligned to the reference.

    Returns
    -------
    dict
        Modality name -> its counts ``(n_cells, n_reference_features)`` and which features each cell
        measured (unmeasured: the reference features the query lacks).

    Raises
    ------
    InputError
        As :func:`scamort.data.sources.read_modalities` (unreadable counts, cells with no modality),
        or for duplicated feature names.
    """
    held = {
        entry.name: entry.modality
        for entry in registry.modalities
        if query_feature_names(data, entry.name, entry.modality) is not None
    }
    read = read_modalities(data, held)
    return {
        entry.name: _aligned(read[entry.name], entry) if entry.name in read else _absent(entry, data.n_obs)
        for entry in registry.modalities
    }
