"""Preprocessing: combine batches measured on different feature panels.

``anndata.concat(..., join="outer")`` fills the features a batch lacks with zeros (or NaN) and forgets
which ones it measured. :func:`concat_panels` records it, as per-batch tables that
``scamort.Modality(measured_key=...)`` reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd

from scamort.errors import InputError

__all__ = ["concat_panels"]


def _named_inputs(adatas: Mapping[str, ad.AnnData] | Sequence[ad.AnnData]) -> dict[str, ad.AnnData]:
    if isinstance(adatas, Mapping):
        named = {str(k): v for k, v in adatas.items()}
        if len(named) != len(adatas):
            raise InputError(
                "concat_panels: the batch names (the mapping's keys) must be distinct as strings."
            )
    elif isinstance(adatas, Sequence) and not isinstance(adatas, str):
        named = {str(i): v for i, v in enumerate(adatas)}
    else:
        raise InputError(
            "concat_panels takes a mapping batch name -> AnnData or a list of AnnData, got "
            f"{type(adatas).__name__}."
        )
    if len(named) < 1:
        raise InputError("concat_panels needs at least one AnnData.")
    for key, value in named.items():
        if not isinstance(value, ad.AnnData):
            raise InputError(f"concat_panels: batch {key!r} is a {type(value).__name__}, not an AnnData.")
        if not value.var_names.is_unique:
            raise InputError(
                f"concat_panels: batch {key!r} has duplicated var_names; make them unique first."
            )
    return named


def _union(names: Sequence[Sequence[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for group in names:
        seen.update(dict.fromkeys(map(str, group)))
    return list(seen)


def _panel_table(index: list[str], label: str, features: list[str], measured: list[set[str]]) -> pd.DataFrame:
    values = np.array([[f in panel for f in features] for panel in measured], dtype=bool).reshape(
        len(index), len(features)
    )
    table = pd.DataFrame(values, index=pd.Index(index, name=label), columns=features)
    return table


def _obsm_frame(adata: ad.AnnData, key: str, batch: str) -> pd.DataFrame | None:
    if key not in adata.obsm:
        return None
    value = adata.obsm[key]
    if not isinstance(value, pd.DataFrame):
        raise InputError(
            f"concat_panels: batch {batch!r} has .obsm[{key!r}] as an array; give it as a DataFrame whose "
            "columns name the features (e.g. the antibodies), so panels can be matched by name."
        )
    if not value.columns.is_unique:
        raise InputError(f"concat_panels: batch {batch!r} has repeated columns in .obsm[{key!r}].")
    return value


def concat_panels(
    adatas: Mapping[str, ad.AnnData] | Sequence[ad.AnnData],
    *,
    label: str = "batch",
    obsm_keys: Sequence[str] = (),
    measured_key: str = "measured",
) -> ad.AnnData:
    """Concatenate batches with different features (outer join) and record which each measured.

    Parameters
    ----------
    adatas
        Batch name -> AnnData (or a list: batches ``"0"``, ``"1"``, ...). Each holds counts in ``.X``
        (and any ``.layers``) over its own genes, possibly none (a protein-only batch), and optionally
        per-cell tables ``.obsm[key]`` (DataFrames whose columns name the features, e.g. antibodies)
        for each ``key`` of ``obsm_keys``; a batch without ``.obsm[key]`` lacks that modality. The
        inputs are only read.
    label
        ``.obs`` column written with each cell's batch name (also the per-batch tables' index name).
    obsm_keys
        ``.obsm`` tables to join by column name (e.g. ``["protein_expression"]``).
    measured_key
        Name of the mask of ``.X``'s features; an ``.obsm`` table ``key`` gets ``f"{key}_{measured_key}"``.

    Returns
    -------
    AnnData
        Cells of all batches in order; ``.X``/``.layers`` over the union of the genes and each
        ``.obsm[key]`` over the union of its columns, zero where a batch did not measure a feature.
        For ``.X`` and every obsm key, with ``M`` the mask's name:

        ``.uns[M]``
            Boolean DataFrame batches × features, True where the batch measured the feature; pass
            ``scamort.Modality(measured_key=M)``.
        ``.obs[f"{M}_present"]``
            Whether the cell's batch measured any of these features; pass it as ``present_key``
            when some batch has none (e.g. an RNA-only batch for the protein modality).

        Other ``.obsm``/``.uns`` entries are not carried over.

    Examples
    --------
    >>> adata = scamort.pp.concat_panels({"a": full, "b": small}, obsm_keys=["protein_expression"])
    >>> prot = scamort.Modality(obsm_key="protein_expression", likelihood="nbmixture",
    ...                         measured_key="protein_expression_measured")
    """
    named = _named_inputs(adatas)
    if not (isinstance(label, str) and label):
        raise InputError(f"label must be a non-empty string, got {label!r}.")
    if not (isinstance(measured_key, str) and measured_key):
        raise InputError(f"measured_key must be a non-empty string, got {measured_key!r}.")
    if isinstance(obsm_keys, str):
        obsm_keys = [obsm_keys]
    frames = {key: {b: _obsm_frame(a, key, b) for b, a in named.items()} for key in obsm_keys}
    for key, by_batch in frames.items():
        if all(frame is None for frame in by_batch.values()):
            raise InputError(f"concat_panels: no batch has .obsm[{key!r}]; check obsm_keys.")
    for batch, adata in named.items():
        if label in adata.obs.columns:
            raise InputError(
                f"concat_panels: batch {batch!r} already has an .obs column {label!r}; choose another label=."
            )
    plain = {b: ad.AnnData(X=a.X, obs=a.obs, var=a.var[[]], layers=dict(a.layers)) for b, a in named.items()}
    out = ad.concat(plain, join="outer", label=label, index_unique=None, fill_value=0, merge=None)
    genes = _union([a.var_names for a in named.values()])
    out = out[:, genes].copy()
    batches = list(named)
    out.obs[label] = pd.Categorical(out.obs[label].astype(str), categories=batches)
    masks = {measured_key: (genes, [set(map(str, a.var_names)) for a in named.values()])}
    for key, by_batch in frames.items():
        columns = _union([f.columns for f in by_batch.values() if f is not None])
        parts = []
        for batch, adata in named.items():
            frame = by_batch[batch]
            if frame is None:
                parts.append(pd.DataFrame(0, index=adata.obs_names, columns=columns))
            else:
                parts.append(frame.reindex(columns=columns, fill_value=0))
        table = pd.concat(parts, axis=0)
        table.index = out.obs_names
        out.obsm[key] = table
        masks[f"{key}_{measured_key}"] = (
            columns,
            [set() if f is None else set(map(str, f.columns)) for f in by_batch.values()],
        )
    cell_batch = out.obs[label].astype(str).to_numpy()
    for name, (features, measured) in masks.items():
        table = _panel_table(batches, label, list(map(str, features)), measured)
        out.uns[name] = table
        any_measured = table.any(axis=1)
        out.obs[f"{name}_present"] = any_measured.reindex(cell_batch).to_numpy(dtype=bool)
    return out
