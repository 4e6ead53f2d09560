"""Building a :class:`scamort.Model`: its options checked, its data registered, its VAE configured.

Everything here runs before any training: the constructor's arguments are validated (one clear
sentence per mistake), recorded as the JSON-ready ``init_params`` that :meth:`scamort.Model.save`
writes, the data's modalities are read and registered, and the VAE is built from the registry and
``init_params`` (also when a saved model is loaded) with data-driven starting values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import anndata as ad
import numpy as np
import torch

from scamort._checks import check_whole_number, is_real_number
from scamort.data import CellData, Modality, Registry, build_registry, encode_cells
from scamort.data.backed import BackedCellData, is_out_of_core
from scamort.data.measured import refuse_unmeasured_features
from scamort.data.out_of_core import stored_features
from scamort.data.sources import ModalityCounts, is_mudata, read_modalities
from scamort.errors import InputError
from scamort.feature_masks import initialize_masked_background
from scamort.label_calibration import (
    DEFAULT_LABEL_GRADIENT,
    DEFAULT_LABEL_WEIGHT,
    attach_labels,
    initialize_classes,
)
from scamort.module import VAE, ModuleConfig
from scamort.nn import DISPERSIONS
from scamort.nn.classifier import PanelClassifier
from scamort.nn.decoder import NegativeBinomialMixtureDecoder
from scamort.query_surgery import prepare_query_module

__all__ = [
    "DEFAULT_ALIGNMENT_WEIGHT",
    "DEFAULT_MIXING_WEIGHT",
    "DEFAULT_N_PRIVATE_LATENT",
    "DEFAULT_PANEL_MIXING_WEIGHT",
    "RNA_LIKELIHOODS",
    "build_module",
    "check_choice",
    "init_params",
    "register",
]

RNA_LIKELIHOODS = ("nb", "zinb", "poisson")

#: Default ``alignment_weight`` (chosen on the multimodal benchmark, ``benchmarks/multimodal.py``).
DEFAULT_ALIGNMENT_WEIGHT = 1.0

#: Default ``n_private_latent`` (chosen on the multimodal benchmark, ``benchmarks/multimodal.py``).
DEFAULT_N_PRIVATE_LATENT = 0

#: Default ``mixing_weight`` (chosen on the multimodal benchmark, ``benchmarks/multimodal.py``).
DEFAULT_MIXING_WEIGHT = 20.0

#: Default ``panel_mixing_weight`` (chosen on the panels benchmark, ``benchmarks/panels.py``).
DEFAULT_PANEL_MIXING_WEIGHT = 2.0


def check_choice(value: str, choices: Sequence[str], name: str) -> None:
    """Refuse ``value`` unless it is one of ``choices``, naming the argument ``name``."""
    if value not in choices:
        raise InputError(f"{name}={value!r} is not supported; choose one of {', '.join(choices)}.")


def _private_sizes(value: int | Mapping[str, int], modalities: Mapping[str, Modality]) -> dict[str, int]:
    """``n_private_latent`` as modality name -> number of private dimensions (validated)."""
    sizes = dict(value) if isinstance(value, Mapping) else dict.fromkeys(modalities, value)
    unknown = sorted(set(sizes) - set(modalities))
    if unknown:
        raise InputError(
            f"n_private_latent names {', '.join(map(repr, unknown))}, not a modality of this model "
            f"({', '.join(map(repr, modalities))})."
        )
    for name, size in sizes.items():
        check_whole_number(size, f"n_private_latent[{name!r}]", minimum=0)
    return {name: int(size) for name, size in sizes.items()}


def _modalities(
    data: Any, modalities: Mapping[str, Modality] | None, *, layer: str | None, likelihood: str
) -> dict[str, Modality]:
    """The modality specs: given explicitly, or RNA from ``layer`` for a plain AnnData."""
    if is_mudata(data):
        if modalities is None:
            raise InputError(
                "For a MuData pass modalities={name: scamort.Modality(...)} naming which of its "
                f"modalities to model (it has {', '.join(data.mod)})."
            )
    elif not isinstance(data, ad.AnnData):
        raise InputError(f"Model expects an AnnData or MuData, got {type(data).__name__}.")
    if modalities is None:
        return {"rna": Modality(layer=layer, likelihood=likelihood)}
    if layer is not None or likelihood != "nb":
        raise InputError(
            "With modalities=..., give each modality's layer and likelihood in its scamort.Modality "
            "(layer= and likelihood= of the Model describe a single RNA AnnData)."
        )
    if not modalities:
        raise InputError("modalities is empty; name at least one modality.")
    for name, modality in modalities.items():
        if not isinstance(modality, Modality):
            raise InputError(f"modalities[{name!r}] must be a scamort.Modality, got {modality!r}.")
    return dict(modalities)


def init_params(
    adata: ad.AnnData,
    *,
    layer: str | None,
    batch_key: str | None,
    labels_key: str | None,
    categorical_covariate_keys: Sequence[str] | None,
    continuous_covariate_keys: Sequence[str] | None,
    n_latent: int,
    n_hidden: int,
    n_layers: int,
    dropout_rate: float,
    likelihood: str,
    dispersion: str,
    seed: int,
    modalities: Mapping[str, Modality] | None,
    modality_dropout: float,
    alignment_weight: float,
    n_private_latent: int | Mapping[str, int],
    mixing_weight: float,
    panel_mixing_weight: float = DEFAULT_PANEL_MIXING_WEIGHT,
) -> dict[str, Any]:
    """The constructor's arguments checked (before any work) and recorded as JSON-ready values.

    Parameters
    ----------
    adata
        The data the model is built on (only its type and modalities are looked at here).
    layer, batch_key, labels_key, categorical_covariate_keys, continuous_covariate_keys, n_latent, \
n_hidden, n_layers, dropout_rate, likelihood, dispersion, seed, modalities, modality_dropout, \
alignment_weight, n_private_latent, mixing_weight, panel_mixing_weight
        As :class:`scamort.Model` takes them.

    Returns
    -------
    dict
        The ``init_params`` a saved model records; ``"modalities"`` maps each modality name to its
        :class:`scamort.Modality` as a dict.

    Raises
    ------
    InputError
        Naming the first argument at fault.
    """
    check_choice(likelihood, RNA_LIKELIHOODS, "likelihood")
    specs = _modalities(adata, modalities, layer=layer, likelihood=likelihood)
    check_choice(dispersion, DISPERSIONS, "dispersion")
    for value, name in ((n_latent, "n_latent"), (n_hidden, "n_hidden"), (n_layers, "n_layers")):
        check_whole_number(value, name)
    check_whole_number(seed, "seed", minimum=0)
    private = _private_sizes(n_private_latent, specs)
    for fraction, name in ((dropout_rate, "dropout_rate"), (modality_dropout, "modality_dropout")):
        if not (is_real_number(fraction) and 0 <= fraction < 1):
            raise InputError(f"{name} must be a number in [0, 1), got {fraction!r}.")
    weights = (
        (alignment_weight, "alignment_weight"),
        (mixing_weight, "mixing_weight"),
        (panel_mixing_weight, "panel_mixing_weight"),
    )
    for weight, name in weights:
        if not (is_real_number(weight, finite=True) and weight >= 0):
            raise InputError(f"{name} must be a finite number >= 0, got {weight!r}.")
    labels = (
        {"label_weight": DEFAULT_LABEL_WEIGHT, "label_gradient": DEFAULT_LABEL_GRADIENT} if labels_key else {}
    )
    return {
        "layer": layer,
        "batch_key": batch_key,
        "labels_key": labels_key,
        "categorical_covariate_keys": list(categorical_covariate_keys or []),
        "continuous_covariate_keys": list(continuous_covariate_keys or []),
        "n_latent": int(n_latent),
        "n_hidden": int(n_hidden),
        "n_layers": int(n_layers),
        "dropout_rate": float(dropout_rate),
        "likelihood": likelihood,
        "dispersion": dispersion,
        "seed": int(seed),
        "modalities": {name: asdict(m) for name, m in specs.items()},
        "modality_dropout": float(modality_dropout),
        "alignment_weight": float(alignment_weight),
        "library_heads": True,
        "n_private_latent": private,
        "mixing_weight": float(mixing_weight),
        "panel_mixing_weight": float(panel_mixing_weight),
        **labels,
    }


def register(
    adata: ad.AnnData, params: Mapping[str, Any]
) -> tuple[Registry, dict[str, ModalityCounts] | None]:
    """Read each modality of ``adata`` and build the registry (features, categories, covariates).

    Parameters
    ----------
    adata
        An AnnData or MuData (a backed AnnData is validated chunk by chunk later, when encoded).
    params
        ``init_params`` from :func:`init_params`.

    Returns
    -------
    tuple
        The :class:`~scamort.data.Registry` and the counts read per modality (``None`` when backed),
        to be encoded without reading them again.

    Raises
    ------
    InputError
        If a modality has no measured cell, or a key or column is missing.
    """
    modalities = {name: Modality(**spec) for name, spec in params["modalities"].items()}
    read: dict[str, ModalityCounts] | None
    if is_out_of_core(adata, modalities):  # counts are validated chunk by chunk in encode_cells
        read = None
        features = stored_features(adata, modalities)
    else:
        read = read_modalities(adata, modalities)
        for name, entry in read.items():
            if not entry.present.any():
                raise InputError(
                    f"Modality {name!r} has no measured cells, so there is nothing to learn it from; "
                    "drop it from modalities= or add cells that have it."
                )
            if entry.measured is not None:
                key = str(modalities[name].measured_key)
                refuse_unmeasured_features(entry.measured, entry.present, entry.feature_names, name, key)
        features = {name: read[name].feature_names for name in modalities}
    registry = build_registry(
        {name: (m, features[name]) for name, m in modalities.items()},
        adata,
        batch_key=params["batch_key"],
        labels_key=params["labels_key"],
        categorical_covariate_keys=params["categorical_covariate_keys"],
        continuous_covariate_keys=params["continuous_covariate_keys"],
    )
    return registry, read


def module_config(registry: Registry, params: Mapping[str, Any]) -> ModuleConfig:
    """The VAE's configuration from the registry and ``init_params`` (also those of older saves)."""
    n_modalities = len(registry.modalities)
    # Absent from models saved before the option existed: those had none.
    private = params.get("n_private_latent", {})
    sizes = tuple(int(private.get(m.name, 0)) for m in registry.modalities)
    private_dims = sizes if n_modalities > 1 and any(sizes) else ()
    return ModuleConfig(
        modalities=tuple((m.name, m.n_features, m.modality.likelihood) for m in registry.modalities),
        n_latent=params["n_latent"] + sum(private_dims),
        n_hidden=params["n_hidden"],
        n_layers=params["n_layers"],
        dropout_rate=params["dropout_rate"],
        dispersion=params["dispersion"],
        modality_dropout=params["modality_dropout"],
        n_batch=registry.n_batch,
        categorical_sizes=registry.categorical_sizes(),
        n_continuous=len(registry.continuous_covariate_keys),
        # Absent from models saved before these options existed: those had neither.
        alignment_weight=params.get("alignment_weight", 0.0),
        library_heads=params.get("library_heads", False),
        private_dims=private_dims,
        mixing_weight=params.get("mixing_weight", 0.0),
        masked=tuple(m.name for m in registry.modalities if m.modality.measured_key is not None),
        panel_dropout=params["modality_dropout"],
        # Absent from models saved before the option existed: those had no panel classifier.
        panel_mixing_weight=params.get("panel_mixing_weight", 0.0),
        # Absent from models saved before labels were learned: those had no label classifier.
        n_labels=len(registry.label_categories) if params.get("label_weight", 0.0) > 0 else 0,
        label_weight=params.get("label_weight", 0.0),
        label_gradient=params.get("label_gradient", DEFAULT_LABEL_GRADIENT),
    )


def build_module(
    adata: ad.AnnData,
    registry: Registry,
    params: Mapping[str, Any],
    read: dict[str, ModalityCounts] | None = None,
) -> tuple[CellData | BackedCellData, VAE]:
    """Encode ``adata`` and build the seeded VAE with data-driven starting values.

    Parameters
    ----------
    adata
        The data to attach.
    registry
        Its registry (built by :func:`register`, or saved).
    params
        ``init_params``.
    read
        Counts already read by :func:`register` (``None`` reads them).

    Returns
    -------
    tuple
        The encoded cells and the VAE (on the CPU, in training mode).
    """
    data: CellData | BackedCellData = encode_cells(adata, registry, read)
    if "query_mapping" not in params:  # a query model keeps its reference's classifier as trained
        data = attach_labels(data, adata, registry)
    torch.manual_seed(params["seed"])
    module = VAE(module_config(registry, params))
    initialize_from_data(module, data)
    initialize_classes(module, data)
    if "query_mapping" in params:  # a query model: reference rows frozen (scamort.query_surgery)
        prepare_query_module(module, params["query_mapping"])
    return data, module


def initialize_from_data(module: VAE, data: CellData | BackedCellData, max_cells: int = 10_000) -> None:
    """Data-driven starting values (overwritten when loading weights): the library-size heads' mean
    and variance, the background rates of ``"nbmixture"`` decoders (from at most ``max_cells``
    measured cells), and which features the panel classifiers score (those some panels lack)."""
    for name in module.library_heads:
        tensors = data.modalities[name]
        module.library_head(name).initialize(tensors.log_library[tensors.present])
    for name, classifier in module.panel_classifiers.items():
        tensors = data.modalities[name]
        table, pattern = tensors.measured_table, tensors.measured_pattern
        if isinstance(classifier, PanelClassifier) and table is not None and pattern is not None:
            classifier.set_varying(table[torch.unique(pattern[tensors.present])])
    for name, decoder in module.decoders.items():
        if not isinstance(decoder, NegativeBinomialMixtureDecoder):
            continue
        tensors = data.modalities[name]
        rows = torch.as_tensor(np.flatnonzero(tensors.present.numpy())[:max_cells])
        sample = data.take(rows)
        counts = sample.modalities[name].rows(0, rows.shape[0]).to_dense()
        library = counts.sum(1, keepdim=True).clamp(min=1)
        measured = sample.modalities[name].measured_rows(0, rows.shape[0])
        if measured is None:
            decoder.initialize_background((counts + 0.5) / library, sample.batch_index)
        else:
            initialize_masked_background(decoder, counts, measured, sample.batch_index)
