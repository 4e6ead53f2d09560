"""What a model learned about its training data's layout: features, categories, sources.

The registry is plain data (JSON round trip) and is the only thing used to turn any AnnData, the training
object or a query, into tensors; so a subset, a view or a reordered copy is read the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import anndata as ad
import numpy as np
import pandas as pd

from scamort.data.categories import category_labels, legacy_labels
from scamort.data.modality import Modality
from scamort.data.validation import check_categorical_column, check_continuous_column, check_obs_key
from scamort.errors import InputError

__all__ = ["ModalityRegistry", "Registry", "build_registry", "label_categories", "label_codes"]


@dataclass(frozen=True)
class ModalityRegistry:
    """One modality: its name, the user's spec and its feature names in model order."""

    name: str
    modality: Modality
    feature_names: tuple[str, ...]

    @property
    def n_features(self) -> int:
        """Number of features the model has for this modality."""
        return len(self.feature_names)


@dataclass(frozen=True)
class Registry:
    """The data layout a model was built for.

    Attributes
    ----------
    modalities
        One entry per modality, in model order.
    batch_key, batch_categories
        The batch column and its categories (a single category ``("0",)`` when there is no batch).
    labels_key, label_categories
        Optional cell labels and their categories (missing values excluded: those cells are
        unlabelled); a model with labels learns to predict them (:mod:`scamort.labels`).
    categorical_covariates
        ``(key, categories)`` pairs of extra categorical covariates.
    continuous_covariate_keys
        Names of continuous covariates (obs columns).
    continuous_covariate_scaling
        ``(mean, standard deviation)`` of each continuous covariate over the training cells; the
        networks see ``(value - mean) / sd`` (sd 1 for a constant column), in training and queries alike,
        so a covariate's units do not matter. Models saved before this was recorded use ``(0, 1)``.
    query_alignment
        A query model's (:meth:`scamort.Model.load_query_data`): data is read against these features
        by name, those it lacks unmeasured, extra ones dropped, a modality it lacks absent in every
        cell (:mod:`scamort.data.query_reading`). False: every feature and modality must be there.
    """

    modalities: tuple[ModalityRegistry, ...]
    batch_key: str | None
    batch_categories: tuple[str, ...]
    labels_key: str | None
    label_categories: tuple[str, ...]
    categorical_covariates: tuple[tuple[str, tuple[str, ...]], ...]
    continuous_covariate_keys: tuple[str, ...]
    continuous_covariate_scaling: tuple[tuple[float, float], ...] = ()
    query_alignment: bool = False

    def __post_init__(self) -> None:
        if not self.continuous_covariate_scaling:  # older saves: the raw values
            unscaled = tuple((0.0, 1.0) for _ in self.continuous_covariate_keys)
            object.__setattr__(self, "continuous_covariate_scaling", unscaled)

    @property
    def n_batch(self) -> int:
        """Number of batches (1 without a batch key)."""
        return len(self.batch_categories)

    @property
    def modality_names(self) -> tuple[str, ...]:
        """Modality names in model order."""
        return tuple(m.name for m in self.modalities)

    def modality(self, name: str) -> ModalityRegistry:
        """The entry of modality ``name``; a clear error for unknown names."""
        for entry in self.modalities:
            if entry.name == name:
                return entry
        raise InputError(f"Unknown modality {name!r}; this model has {', '.join(self.modality_names)}.")

    def categorical_sizes(self) -> tuple[int, ...]:
        """Category counts of the covariates injected into the decoders (batch first, if any)."""
        sizes = [len(c) for _, c in self.categorical_covariates]
        return (self.n_batch, *sizes) if self.batch_key is not None else tuple(sizes)

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> Registry:
        """Inverse of :meth:`to_dict`."""
        modalities = tuple(
            ModalityRegistry(
                name=m["name"],
                modality=Modality(**m["modality"]),
                feature_names=tuple(m["feature_names"]),
            )
            for m in data["modalities"]
        )
        return cls(
            modalities=modalities,
            batch_key=data["batch_key"],
            batch_categories=tuple(data["batch_categories"]),
            labels_key=data["labels_key"],
            label_categories=tuple(data["label_categories"]),
            categorical_covariates=tuple((key, tuple(cats)) for key, cats in data["categorical_covariates"]),
            continuous_covariate_keys=tuple(data["continuous_covariate_keys"]),
            continuous_covariate_scaling=tuple(
                (float(mean), float(sd)) for mean, sd in data.get("continuous_covariate_scaling", ())
            ),
            query_alignment=bool(data.get("query_alignment", False)),
        )


def _categories(adata: ad.AnnData, key: str, role: str) -> tuple[str, ...]:
    column = check_categorical_column(adata, key, role)
    original = adata.obs[key]
    if hasattr(original, "cat"):
        return tuple(pd.unique(column.to_numpy()[np.argsort(original.cat.codes.to_numpy(), kind="stable")]))
    return tuple(sorted(set(column)))


def label_categories(adata: ad.AnnData, key: str) -> tuple[str, ...]:
    """Categories of the labels column ``adata.obs[key]``, its missing values (unlabelled cells) left out;
    a column without any label is refused."""
    column = check_obs_key(adata, key, "labels_key")
    if bool(column.isna().all()):
        raise InputError(
            f"labels_key {key!r} has no label at all (every value is missing); give some cells a label, "
            "or build the model without labels_key."
        )
    labelled = column[column.notna()]
    texts = category_labels(labelled, key, "labels_key").to_numpy()
    if isinstance(labelled.dtype, pd.CategoricalDtype):
        return tuple(pd.unique(texts[np.argsort(labelled.cat.codes.to_numpy(), kind="stable")]))
    return tuple(sorted(set(texts)))


def label_codes(adata: ad.AnnData, key: str, categories: Sequence[str]) -> np.ndarray:
    """Codes ``(n_cells,)`` int64 of ``adata.obs[key]`` in ``categories``' order; -1 for a missing value,
    a column absent from ``adata`` (every cell) and a label not among ``categories`` (unlabelled)."""
    if key not in adata.obs.columns:
        return np.full(adata.n_obs, -1, dtype=np.int64)
    column = adata.obs[key]
    labelled = column.notna().to_numpy()
    codes = np.full(adata.n_obs, -1, dtype=np.int64)
    if labelled.any():
        texts = category_labels(column[labelled], key, "labels_key")
        lookup = {c: i for i, c in enumerate(categories)}
        codes[labelled] = texts.map(lambda t: lookup.get(t, -1)).to_numpy(dtype=np.int64)
    return codes


def build_registry(
    modality_features: Mapping[str, tuple[Modality, Sequence[str]]],
    adata: ad.AnnData,
    *,
    batch_key: str | None,
    labels_key: str | None,
    categorical_covariate_keys: Sequence[str] | None,
    continuous_covariate_keys: Sequence[str] | None,
) -> Registry:
    """Record the layout of the training data.

    Parameters
    ----------
    modality_features
        Modality name -> (its spec, its feature names).
    adata
        The object whose ``.obs`` holds the batch, label and covariate columns.
    """
    categorical_keys = list(categorical_covariate_keys or [])
    continuous_keys = list(continuous_covariate_keys or [])
    scaling = []
    for key in continuous_keys:
        values = check_continuous_column(adata, key, "Continuous covariate")
        sd = float(values.std())
        scaling.append((float(values.mean()), sd if sd > 0 else 1.0))
    modalities = tuple(
        ModalityRegistry(name, modality, tuple(map(str, names)))
        for name, (modality, names) in modality_features.items()
    )
    for entry in modalities:
        if len(set(entry.feature_names)) != entry.n_features:
            raise InputError(
                f"Modality {entry.name!r} has duplicated feature names; make them unique first "
                "(e.g. adata.var_names_make_unique())."
            )
    return Registry(
        modalities=modalities,
        batch_key=batch_key,
        batch_categories=_categories(adata, batch_key, "batch_key") if batch_key else ("0",),
        labels_key=labels_key,
        label_categories=label_categories(adata, labels_key) if labels_key else (),
        categorical_covariates=tuple(
            (key, _categories(adata, key, "Categorical covariate")) for key in categorical_keys
        ),
        continuous_covariate_keys=tuple(continuous_keys),
        continuous_covariate_scaling=tuple(scaling),
    )


def category_codes(adata: ad.AnnData, key: str, categories: Sequence[str], role: str) -> np.ndarray:
    """Integer codes of ``adata.obs[key]`` in the registry's category order; unseen ones refused."""
    column = check_categorical_column(adata, key, role)
    lookup = {c: i for i, c in enumerate(categories)}
    codes = column.map(lookup)
    if codes.isna().any():  # a model saved before whole numbers were read as integers ("1.0")
        legacy = legacy_labels(adata.obs[key]).map(lookup)
        if not legacy.isna().any():
            codes = legacy
    unseen = column[codes.isna()].unique()
    if len(unseen):
        raise InputError(
            f"{role} {key!r} has categories the model was not trained on "
            f"({', '.join(map(repr, unseen[:5]))}); the model knows {', '.join(map(repr, categories[:10]))}."
        )
    return codes.to_numpy(dtype=np.int64)
