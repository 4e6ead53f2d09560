"""Label transfer: a model's reference labels predicted for any cells, with calibrated probabilities.

A model built with ``labels_key`` carries a label classifier in its VAE
(``scamort.nn.label_classifier.LabelClassifier``, trained and calibrated as
:mod:`scamort.label_calibration` describes). :func:`predict` reads each cell's posterior mean through
the model's own encoders (a query model's too) and turns it into probabilities over the reference labels:
the softmax of the classifier's logits over the fitted temperature, times the probability that the cell
is of a reference type at all (from its distance to the labels' Gaussians in the latent). So each row of
``predict(soft=True)`` sums to that in-distribution probability, and what is missing to 1 is the
probability that the cell is of a type absent from the reference. The largest probability of a row (the
cell's *confidence*) is the score to threshold: a cell unlike every reference type gets a low one.
:func:`scamort.tl.transfer_labels` writes labels, calling cells below a confidence threshold
``"unknown"``.
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
    "DEFAULT_THRESHOLD",
    "expected_calibration_error",
    "predict",
    "probabilities",
    "transfer_labels",
]

#: The recommended confidence threshold; cells whose largest label probability is below it are "unknown".
DEFAULT_THRESHOLD = 0.5


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
def probabilities(
    parts: ModelParts, adata: ad.AnnData | None, indices: Indices, batch_size: int
) -> pd.DataFrame:
    """Calibrated label probabilities, cells × reference labels (see :func:`predict`)."""
    classifier = _classifier(parts)
    cells = parts.select(adata, indices)
    mean, _ = inference.latent(parts.module, cells.data, cells.index, batch_size=batch_size)
    classifier.eval()
    z = torch.as_tensor(mean[:, : parts.n_latent], device=parts.device)
    rows = [classifier.probabilities(chunk).cpu().numpy() for chunk in torch.split(z, batch_size)]
    values = np.concatenate(rows) if rows else np.zeros((0, len(parts.registry.label_categories)))
    return pd.DataFrame(values, index=cells.names, columns=pd.Index(parts.registry.label_categories))


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
    fitted on held-out labelled reference cells, and each cell's probabilities are scaled by the
    probability that it is of a reference type at all, fitted so that reference types left out in turn
    score low (see :mod:`scamort.label_calibration`). Each row of ``soft=True`` therefore sums to that
    in-distribution probability; the rest, to 1, is the probability of a type the reference lacks. The
    largest probability per cell is the confidence: thresholding it (recommended
    :data:`scamort.labels.DEFAULT_THRESHOLD`, as :func:`scamort.tl.transfer_labels` does) flags cells
    of novel types. See the guide's label-transfer page.

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
    labels of probabilities, each row summing to at most 1.

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
    unknown_label: str = "unknown",
    copy: bool = False,
) -> ad.AnnData | None:
    """Write each cell's predicted reference label into ``adata``, calling unconfident cells unknown.

    The model (built with ``labels_key`` and trained; a query model from ``load_query_data`` too)
    predicts calibrated probabilities (:meth:`scamort.Model.predict` with ``soft=True``). A cell's
    confidence is its largest probability; a cell whose confidence is below ``threshold`` gets
    ``unknown_label``: it is unlike every reference type (a novel type) or between types.

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
        Confidence below which a cell is ``unknown_label``, in ``[0, 1]`` (0: every cell gets a
        reference label).
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
        ``.uns[key_added]``
            ``{"params": {"threshold": ..., "unknown_label": ..., "labels_key": ...,
            "scamort_version": ...}}``.
    """
    from scamort._version import __version__
    from scamort.export import check_key_added

    check_key_added(key_added)
    if not (is_real_number(threshold, finite=True) and 0 <= threshold <= 1):
        raise InputError(f"threshold must be a number in [0, 1], got {threshold!r}.")
    reference = tuple(model.registry.label_categories)
    if not isinstance(unknown_label, str) or not unknown_label or unknown_label in reference:
        raise InputError(
            f"unknown_label must be a non-empty string that is not a reference label; got {unknown_label!r} "
            f"(the reference labels are {', '.join(map(repr, reference[:10]))})."
        )
    table = model.predict(adata, soft=True)
    values = table.to_numpy()
    confidence = values.max(1).astype(np.float32)
    names = np.asarray(table.columns.to_numpy()[values.argmax(1)], dtype=object)
    names[confidence < threshold] = unknown_label
    target = adata.copy() if copy else adata
    target.obs[key_added] = pd.Categorical(names, categories=[*reference, unknown_label])
    target.obs[key_added + "_confidence"] = confidence
    target.uns[key_added] = {
        "params": {
            "threshold": float(threshold),
            "unknown_label": unknown_label,
            "labels_key": str(model.registry.labels_key),
            "scamort_version": __version__,
        }
    }
    return target if copy else None
