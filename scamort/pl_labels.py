"""Plots of label transfer: a confusion matrix and a reliability diagram (re-exported by scamort.pl)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from scamort._figures import figure_of
from scamort.errors import InputError
from scamort.labels import expected_calibration_error

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["confusion_matrix", "reliability_diagram"]


def _one_dimensional(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or len(array) == 0:
        raise InputError(
            f"{name} must be a non-empty 1-d sequence, one entry per cell; got shape {array.shape}."
        )
    return array


def confusion_matrix(true: Any, predicted: Any, normalize: bool = True, ax: Axes | None = None) -> Figure:
    """Plot the confusion matrix of true against predicted labels (rows: true, columns: predicted).

    Parameters
    ----------
    true, predicted
        One label per cell each, the same length (e.g. ``adata.obs["cell_type"]`` and
        ``adata.obs["scamort_label"]``). Predicted labels absent from the true ones (such as
        ``"unknown"``) get their own columns; true labels never predicted their own rows.
    normalize
        Show each row as fractions of its true label's cells (else counts).
    ax
        Axes to draw on; a new figure is made when ``None``.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding ``ax``.
    """
    truth = _one_dimensional(true, "true").astype(str)
    guess = _one_dimensional(predicted, "predicted").astype(str)
    if len(truth) != len(guess):
        raise InputError(
            f"true and predicted must have one label per cell each; got {len(truth)} and {len(guess)}."
        )
    rows = list(pd.unique(np.sort(truth)))
    columns = rows + [label for label in pd.unique(np.sort(guess)) if label not in rows]
    table = pd.crosstab(pd.Categorical(truth, rows), pd.Categorical(guess, columns), dropna=False)
    values = table.to_numpy().astype(np.float64)
    if normalize:
        values = values / np.maximum(values.sum(1, keepdims=True), 1)
    if ax is None:
        size = 1.2 + 0.45 * len(columns)
        fig, ax = plt.subplots(figsize=(size + 1.0, 1.2 + 0.45 * len(rows)), layout="constrained")
    else:
        fig = figure_of(ax)
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=90)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    accuracy = float(np.mean(truth == guess))
    ax.set_title(f"accuracy {accuracy:.3f}")
    fig.colorbar(image, ax=ax, label="fraction of true label" if normalize else "cells")
    return fig


def reliability_diagram(confidence: Any, correct: Any, n_bins: int = 15, ax: Axes | None = None) -> Figure:
    """Plot a reliability diagram: accuracy against mean confidence per confidence bin, with the ECE.

    Calibrated probabilities lie on the diagonal: of the cells predicted with confidence 0.8, 80 %
    are right. The title gives the expected calibration error
    (:func:`scamort.labels.expected_calibration_error`: the cell-weighted mean gap over the bins).

    Parameters
    ----------
    confidence
        Each cell's largest label probability, in ``[0, 1]`` (e.g.
        ``adata.obs["scamort_label_confidence"]``).
    correct
        Whether each cell's predicted label is right (bool), the same length.
    n_bins
        Number of equal-width confidence bins over ``[0, 1]``.
    ax
        Axes to draw on; a new figure is made when ``None``.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding ``ax``.
    """
    conf = _one_dimensional(confidence, "confidence").astype(np.float64)
    right = _one_dimensional(correct, "correct")
    if len(conf) != len(right):
        raise InputError(
            f"confidence and correct must have one entry per cell each; got {len(conf)} and {len(right)}."
        )
    if not np.all((conf >= 0) & (conf <= 1)):
        raise InputError("confidence must lie in [0, 1] (probabilities).")
    if not isinstance(n_bins, int | np.integer) or isinstance(n_bins, bool) or n_bins < 1:
        raise InputError(f"n_bins must be a whole number >= 1, got {n_bins!r}.")
    right = right.astype(bool)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    used = np.unique(bins)
    mean_confidence = np.array([conf[bins == b].mean() for b in used])
    accuracy = np.array([right[bins == b].mean() for b in used])
    share = np.array([np.mean(bins == b) for b in used])
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5), layout="constrained")
    else:
        fig = figure_of(ax)
    width = 1.0 / n_bins
    ax.bar((used + 0.5) * width, accuracy, width=width * 0.9, color="C0", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="calibrated")
    ax.scatter(mean_confidence, accuracy, s=12 + 300 * share, color="C1", zorder=3, label="bin (size: cells)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (largest probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ECE {expected_calibration_error(conf, right, n_bins):.3f} ({len(conf)} cells)")
    ax.legend(loc="upper left", fontsize="small")
    return fig
