"""Label transfer: a model's reference labels predicted for any cells, with calibrated probabilities
and a separate novelty score.

A model built with ``labels_key`` carries a label classifier in its VAE
(``scamort.nn.label_classifier.LabelClassifier``, trained and calibrated as
:mod:`scamort.label_calibration` describes). :func:`predict` reads each cell's posterior mean through
the model's own encoders (a query model's too) and turns it into probabilities over the reference labels:
the softmax of the classifier's logits over the temperature fitted on held-out labelled reference cells.
Each row sums to 1 and its largest value (the cell's *confidence*) estimates how often the predicted label
is right. :func:`novelty` is the other question, whether the cell is of a reference type at all: the
probability of a type absent from the reference, from the cell's distance to the labels' Gaussians in the
latent. :func:`scamort.tl.transfer_labels` writes labels, calling cells ``"unknown"`` whose novelty is
above a threshold or whose confidence is below one.
"""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from scamort import inference
from scamort._checks import is_real_number
from scamort.errors import InputError
from scamort.model_parts import Indices, ModelParts
from scamort.nn.label_classifier import LabelClassifier

__all__ = [
    "DEFAULT_NOVELTY_THRESHOLD",
    "DEFAULT_THRESHOLD",
    "expected_calibration_error",
    "novelty",
    "predict",
    "probabilities",
    "transfer_labels",
]

#: The recommended confidence threshold; cells whose largest label probability is below it are "unknown".
DEFAULT_THRESHOLD = 0.5

#: The recommended novelty threshold; cells whose novelty score is above it are "unknown".
DEFAULT_NOVELTY_THRESHOLD = 0.5


def _classifier(parts: ModelParts) -> LabelClassifier:
    """The model's label classifier; refuse, in one sentence, a model that has none."""
    classifier = parts.module.label_classifier
    if classifier is None:
        why = (
            "it was saved by a scamort that did not learn labels; build and train it again"
            if parts.registry.labels_key is not None
            else "build it with Model(adata, labels_key=...) naming the .obs column of cell labels"
        )
        raise InputError(f"This model has no label classifier to predict with: {why}.")
    assert isinstance(classifier, LabelClassifier)
    return classifier


@torch.no_grad()
def _scores(
    parts: ModelParts, adata: ad.AnnData | None, indices: Indices, batch_size: int
) -> tuple[pd.DataFrame, pd.Series]:
    """Calibrated label probabilities (cells × reference labels) and novelty scores (cells)."""
    classifier = _classifier(parts)
    cells = parts.select(adata, indices)
    mean, _ = inference.latent(parts.module, cells.data, cells.index, batch_size=batch_size)
    classifier.eval()
    z = torch.as_tensor(mean[:, : parts.n_latent], device=parts.device)
    chunks = torch.split(z, batch_size)
    rows = [classifier.probabilities(chunk).cpu().numpy() for chunk in chunks]
    scores = [classifier.novelty_score(chunk).cpu().numpy() for chunk in chunks]
    values = np.concatenate(rows) if rows else np.zeros((0, len(parts.registry.label_categories)))
    score = np.concatenate(scores) if scores else np.zeros(0)
    table = pd.DataFrame(values, index=cells.names, columns=pd.Index(parts.registry.label_categories))
    return table, pd.Series(score, index=cells.names, name="novelty")


def probabilities(
    parts: ModelParts, adata: ad.AnnData | None, indices: Indices, batch_size: int
) -> pd.DataFrame:
    """Calibrated label probabilities, cells × reference labels (see :func:`predict`)."""
    return _scores(parts, adata, indices, batch_size)[0]


def novelty(parts: ModelParts, adata: ad.AnnData | None, indices: Indices, batch_size: int) -> pd.Series:
    """Each cell's novelty score: the probability that it is of a type the reference lacks.

    ``sigmoid``-mapped smallest squared Mahalanobis distance of the cell's posterior mean to a
    reference label's Gaussian (one shared covariance), the map fitted after training so that held-out
    labelled cells score low and the same cells scored without their own label's Gaussian (each label
    in turn playing a type the reference lacks) score high; see :mod:`scamort.label_calibration`.
    Threshold it at :data:`scamort.labels.DEFAULT_NOVELTY_THRESHOLD` (0.5: more likely novel than
    not), as :func:`scamort.tl.transfer_labels` does.

    Parameters
    ----------
    adata
        Cells to score (default: the model's own), with the model's features.
    indices
        Positions of cells within ``adata`` (default all).
    batch_size
        Cells per forward pass.

    Returns
    -------
    pd.Series
        ``(n_cells,)`` scores in ``[0, 1]``, indexed by ``obs_names``.

    Raises
    ------
    InputError
        If the model has no label classifier (built without ``labels_key``), or bad cells.
    """
    return _scores(parts, adata, indices, batch_size)[1]


def predict(
    parts: ModelParts,
    adata: ad.AnnData | None,
    indices: Indices,
    *,
    soft: bool,
    batch_size: int,
) -> np.ndarray | pd.DataFrame:
    """Predict each cell's reference label (needs a model built with ``labels_key``).

    The classifier reads each cell's posterior mean (through this model's encoders, so a query model
    predicts its own cells the same way). Its probabilities are calibrated: the softmax temperature is
    fitted on held-out labelled reference cells (see :mod:`scamort.label_calibration`), and each row of
    ``soft=True`` sums to 1. The largest probability per cell is the confidence, an estimate of how often
    the predicted label is right. Whether a cell is of a reference type at all is a separate score,
    :meth:`scamort.Model.novelty`; :func:`scamort.tl.transfer_labels` thresholds both. See the guide's
    label-transfer page.

    Parameters
    ----------
    adata
        Cells to label (default: the model's own); any AnnData/MuData with the model's features (the
        labels column is not needed).
    indices
        Positions of cells within ``adata`` (default all).
    soft
        Return probabilities instead of one label per cell.
    batch_size
        Cells per forward pass.

    Returns
    -------
    ``soft=False``: an array ``(n_cells,)`` of reference label names (the most probable, as
    scvi-tools' ``SCANVI.predict``). ``soft=True``: a DataFrame cells (``obs_names``) × reference
    labels of probabilities, each row summing to 1.

    Raises
    ------
    InputError
        If the model has no label classifier (built without ``labels_key``), or bad cells.
    """
    if not isinstance(soft, bool | np.bool_):
        raise InputError(f"soft must be True or False, got {soft!r}.")
    table = probabilities(parts, adata, indices, batch_size)
    if soft:
        return table
    return np.asarray(table.columns.to_numpy()[table.to_numpy().argmax(1)], dtype=object)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error: the cell-weighted mean over ``n_bins`` equal-width confidence bins
    ``(lo, hi]`` of ``|mean confidence - accuracy|``.

    Parameters
    ----------
    confidence
        Each cell's largest probability, ``(n_cells,)`` in ``[0, 1]``.
    correct
        Whether its predicted label is right, ``(n_cells,)`` bool.
    n_bins
        Number of bins.

    Returns
    -------
    The ECE, in ``[0, 1]``.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape or confidence.ndim != 1 or len(confidence) == 0:
        raise InputError(
            f"confidence and correct must be 1-d of the same, non-zero length; got {confidence.shape} "
            f"and {correct.shape}."
        )
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        inside = bins == b
        total += inside.mean() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(total)


def transfer_labels(
    adata: ad.AnnData,
    model: Any,
    *,
    key_added: str = "scamort_label",
    threshold: float = DEFAULT_THRESHOLD,
    novelty_threshold: float = DEFAULT_NOVELTY_THRESHOLD,
    unknown_label: str = "unknown",
    copy: bool = False,
) -> ad.AnnData | None:
    """Write each cell's predicted reference label into ``adata``, calling unconfident cells unknown.

    The model (built with ``labels_key`` and trained; a query model from ``load_query_data`` too)
    predicts calibrated probabilities (:meth:`scamort.Model.predict` with ``soft=True``) and a novelty
    score (:meth:`scamort.Model.novelty`). A cell's confidence is its largest probability; a cell whose
    novelty is above ``novelty_threshold`` (unlike every reference type: a novel type) or whose
    confidence is below ``threshold`` (between types) gets ``unknown_label``.

    Parameters
    ----------
    adata
        Cells to label, with the model's features (its labels column is not needed).
    model
        A trained :class:`scamort.Model` with labels.
    key_added
        ``.obs`` column of the labels; the confidence goes to ``key_added + "_confidence"`` and the
        parameters to ``.uns[key_added]``.
    threshold
        Confidence below which a cell is ``unknown_label``, in ``[0, 1]`` (0: no cell is unknown
        for its confidence).
    novelty_threshold
        Novelty score above which a cell is ``unknown_label``, in ``[0, 1]`` (1: no cell is unknown
        for its novelty).
    unknown_label
        The label of unconfident cells; must not be one of the reference labels.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData | None
        ``None`` when ``copy=False`` (``adata`` is modified in place), else the modified copy.
        These keys are written, and nothing else is touched:

        ``.obs[key_added]``
            Categorical: the reference labels, then ``unknown_label``.
        ``.obs[key_added + "_confidence"]``
            The largest probability per cell, float32 in ``[0, 1]``.
        ``.obs[key_added + "_novelty"]``
            The novelty score per cell, float32 in ``[0, 1]``.
        ``.uns[key_added]``
            ``{"params": {"threshold": ..., "novelty_threshold": ..., "unknown_label": ...,
            "labels_key": ..., "scamort_version": ...}}``.
    """
    from scamort._version import __version__
    from scamort.export import check_key_added

    check_key_added(key_added)
    if not (is_real_number(threshold, finite=True) and 0 <= threshold <= 1):
        raise InputError(f"threshold must be a number in [0, 1], got {threshold!r}.")
    if not (is_real_number(novelty_threshold, finite=True) and 0 <= novelty_threshold <= 1):
        raise InputError(f"novelty_threshold must be a number in [0, 1], got {novelty_threshold!r}.")
    reference = tuple(model.registry.label_categories)
    if not isinstance(unknown_label, str) or not unknown_label or unknown_label in reference:
        raise InputError(
            f"unknown_label must be a non-empty string that is not a reference label; got {unknown_label!r} "
            f"(the reference labels are {', '.join(map(repr, reference[:10]))})."
        )
    table, score = _scores(model._parts(), adata, None, batch_size=4096)  # one pass over the cells
    values = table.to_numpy()
    confidence = values.max(1).astype(np.float32)
    novel = score.to_numpy().astype(np.float32)
    names = np.asarray(table.columns.to_numpy()[values.argmax(1)], dtype=object)
    names[(confidence < threshold) | (novel > novelty_threshold)] = unknown_label
    target = adata.copy() if copy else adata
    target.obs[key_added] = pd.Categorical(names, categories=[*reference, unknown_label])
    target.obs[key_added + "_confidence"] = confidence
    target.obs[key_added + "_novelty"] = novel
    target.uns[key_added] = {
        "params": {
            "threshold": float(threshold),
            "novelty_threshold": float(novelty_threshold),
            "unknown_label": unknown_label,
            "labels_key": str(model.registry.labels_key),
            "scamort_version": __version__,
        }
    }
    return target if copy else None
