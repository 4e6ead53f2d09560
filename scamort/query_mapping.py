"""Reference mapping: a query model from a trained reference and new cells (``Model.load_query_data``).

The scArches recipe for scamort's VAE: the reference's weights are kept and frozen; every weight
indexed by a batch or covariate category gets new rows for the query's new categories; each encoder
gets a learned per-gene shift of its input per new batch, optionally a hidden-layer shift too
(:mod:`scamort.query_surgery`). Training the query model
(``query_model.train()``, with mapping defaults: ``scamort.model_training.QUERY_TRAIN_DEFAULTS``) fits
only those. The reference is a :class:`scamort.Model` or the folder of a saved one: the reference's
cells are never needed. Its query is read against the reference's features by name
(:mod:`scamort.data.query_reading`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import anndata as ad
import torch

from scamort import io
from scamort._checks import check_whole_number
from scamort.data import Registry
from scamort.data.query_reading import query_feature_names
from scamort.data.registry import _categories
from scamort.data.sources import is_mudata
from scamort.errors import InputError
from scamort.model_persistence import restore_weights
from scamort.model_setup import module_config
from scamort.module import VAE
from scamort.query_surgery import grown_weights, query_state_dict

__all__ = ["MIN_SHARED_FRACTION", "load_query_data"]

logger = logging.getLogger(__name__)

#: ``scamort.Model`` (not imported here: the model imports this module).
ModelT = TypeVar("ModelT")

#: A query must hold at least this fraction of the reference's features of each modality it has.
MIN_SHARED_FRACTION = 0.5


def _reference_parts(cls: type, reference: Any) -> tuple[dict[str, Any], Registry, dict[str, torch.Tensor]]:
    """The reference's ``init_params``, registry and weights (CPU), from a model or a saved folder."""
    if isinstance(reference, cls):
        model: Any = reference
        if not model.is_trained:
            raise InputError("The reference model is not trained; train it (reference.train()) first.")
        params, registry = model.init_params, model.registry
        state = {name: t.detach().cpu().clone() for name, t in model.module.state_dict().items()}
    elif isinstance(reference, str | Path):
        path = Path(reference)
        if not (path / io.SPEC_FILE).is_file():
            raise InputError(
                f"reference {str(path)!r} is not a saved scamort model folder (no {io.SPEC_FILE} in it); "
                "pass a trained scamort.Model or the folder Model.save wrote."
            )
        saved = io.load(path)
        params, registry = saved.init_params, Registry.from_dict(saved.registry)
        if "query_mapping" not in params:
            module = VAE(module_config(registry, params))
            restore_weights(module, saved, path, torch.device("cpu"))
            state = module.state_dict()
    else:
        raise InputError(
            "reference must be a trained scamort.Model or the folder of a saved one, got "
            f"{type(reference).__name__}."
        )
    if "query_mapping" in params:
        raise InputError(
            "The reference is itself a query model (made by load_query_data); map onto the reference it "
            "was mapped to, or train a model on the joint data."
        )
    return dict(params), registry, state


def _check_features(query: ad.AnnData, registry: Registry) -> None:
    """Refuse queries sharing too few features or holding an unknown modality; log what is dropped."""
    if is_mudata(query):
        unknown = sorted(set(query.mod) - set(registry.modality_names))
        if unknown:
            raise InputError(
                f"The query has modality {unknown[0]!r}, which the reference lacks (it has "
                f"{', '.join(map(repr, registry.modality_names))}); drop it from the query first."
            )
    held = 0
    for entry in registry.modalities:
        names = query_feature_names(query, entry.name, entry.modality)
        if names is None:
            continue
        held += 1
        reference = set(entry.feature_names)
        shared = len(reference.intersection(names))
        if shared < MIN_SHARED_FRACTION * entry.n_features:
            raise InputError(
                f"The query shares only {shared} of the reference's {entry.n_features} {entry.name!r} "
                f"features (by name); mapping needs at least half of them, so check that both name "
                "features the same way (e.g. gene symbols vs Ensembl ids)."
            )
        extra = [name for name in names if name not in reference]
        if extra:
            logger.info(
                "query: dropping %d %r features the reference does not model (e.g. %s)",
                len(extra),
                entry.name,
                ", ".join(map(repr, extra[:3])),
            )
        if shared < entry.n_features:
            logger.info(
                "query: %d of the reference's %r features are missing and count as unmeasured",
                entry.n_features - shared,
                entry.name,
            )
    if not held:
        raise InputError(
            "The query holds none of the reference's modalities "
            f"({', '.join(map(repr, registry.modality_names))})."
        )


def _categories_with_new(query: ad.AnnData, key: str, known: tuple[str, ...], role: str) -> tuple[str, ...]:
    """The reference's categories followed by the query's new ones (NaN refused)."""
    if key not in query.obs.columns:
        raise InputError(
            f"The query has no .obs column {key!r} ({role}); add it, or pass batch_key= naming the "
            "query's batch column."
        )
    if query.obs[key].isna().any():
        raise InputError(
            f"The query's .obs[{key!r}] ({role}) has {int(query.obs[key].isna().sum())} missing values; "
            "give those cells a category (e.g. a new batch 'unknown'), since scamort does not guess it."
        )
    found = _categories(query, key, role)
    return known + tuple(c for c in found if c not in known)


def _query_registry(query: ad.AnnData, registry: Registry, batch_key: str | None) -> Registry:
    """The reference's registry with the query's batch column and new categories appended."""
    key = registry.batch_key if batch_key is None else batch_key
    if registry.batch_key is None and batch_key is not None:
        raise InputError(
            "batch_key was given, but the reference was trained without a batch key, so it has no "
            "batch weights to extend; map without batch_key."
        )
    batches = registry.batch_categories
    if key is not None:
        batches = _categories_with_new(query, key, registry.batch_categories, "batch_key")
    covariates = tuple(
        (name, _categories_with_new(query, name, categories, "categorical covariate"))
        for name, categories in registry.categorical_covariates
    )
    return replace(
        registry,
        batch_key=key,
        batch_categories=batches,
        categorical_covariates=covariates,
        query_alignment=True,
    )


def load_query_data(
    cls: type[ModelT],
    query: ad.AnnData,
    reference: Any,
    *,
    batch_key: str | None = None,
    encoder_shift: bool = False,
    gene_shift: bool = True,
    seed: int | None = None,
) -> ModelT:
    """A query model: ``query``'s cells mapped onto a trained reference (scArches-style).

    The reference's weights are copied and frozen (the reference itself is not touched, and the
    embedding of its cells never changes). Every weight indexed by a batch or categorical covariate
    (the decoders' covariate embeddings, gene-batch dispersions, protein backgrounds, library-size
    heads) gets new rows for the query's new categories, starting at the mean of the reference's
    rows; cells of the reference's own categories use the reference's rows. The encoders read no
    covariates, so a frozen encoder cannot undo a batch effect: with ``gene_shift`` (the default)
    each encoder learns, per new batch and feature, a shift of the nonzero ``log1p`` counts it reads
    (a gene-specific capture efficiency); with ``encoder_shift``, one vector per new batch added to
    its first hidden layer. Train the result
    with ``query_model.train()``: only these new weights learn, under mapping defaults (no KL
    warm-up, lr 1e-2, no weight decay, at most 100 epochs with early stopping).

    The query is read against the reference's features by name: another order is fine, features
    the reference lacks are dropped (one log line), reference features the query lacks count as
    unmeasured (left out of the likelihood, never read as zeros), and a modality the query lacks
    (e.g. protein for an RNA-only AnnData) is missing in all its cells and can be imputed
    (:meth:`impute`).

    Parameters
    ----------
    query
        The new cells: an AnnData or MuData with the reference's modalities (or some of them) and
        its ``.obs`` columns (batch, covariates). Only read, never modified.
    reference
        A trained :class:`scamort.Model`, or the folder a saved one was written to (the reference's
        data is not needed).
    batch_key
        The query's batch column (default: the reference's ``batch_key``). Categories named like a
        reference batch use that batch's weights; others are new batches. Missing values are refused.
    encoder_shift
        Learn a per-new-batch shift of each encoder's first hidden layer (off by default: trained on
        the ELBO it tends to move a query batch as a whole rather than onto the reference).
    gene_shift
        Learn a per-new-batch, per-feature shift of the encoders' ``log1p`` counts.
    seed
        Seeds the query's training (default: the reference's seed).

    Returns
    -------
    Model
        A new model attached to ``query``; a normal model (save, load, every query) with more batch
        categories than the reference.

    Raises
    ------
    InputError
        Before any work: a reference that is neither a trained model nor a saved model folder (or
        of another save format); a query sharing fewer than half of the reference's features of a
        modality, holding a modality the reference lacks or none of its modalities, lacking the
        batch or covariate columns, or with missing batch values.
    """
    if not (isinstance(query, ad.AnnData) or is_mudata(query)):
        raise InputError(f"query must be an AnnData or MuData, got {type(query).__name__}.")
    if not isinstance(encoder_shift, bool):
        raise InputError(f"encoder_shift must be True or False, got {encoder_shift!r}.")
    if not isinstance(gene_shift, bool):
        raise InputError(f"gene_shift must be True or False, got {gene_shift!r}.")
    params, registry, state = _reference_parts(cls, reference)
    _check_features(query, registry)
    query_registry = _query_registry(query, registry, batch_key)
    params = {**params, "batch_key": query_registry.batch_key}
    if seed is not None:
        check_whole_number(seed, "seed", minimum=0)
        params["seed"] = int(seed)
    grown = grown_weights(state, VAE(module_config(query_registry, params)))
    params["query_mapping"] = {
        "frozen_rows": grown,
        "reference_batches": registry.n_batch,
        "encoder_shift": encoder_shift,
        "gene_shift": gene_shift,
    }
    model: Any = cls.__new__(cls)
    model._setup(query, query_registry, params)
    model.module.load_state_dict(query_state_dict(state, model.module))
    model.module.eval()
    model.is_trained = True  # the weights are the trained reference's
    return model
