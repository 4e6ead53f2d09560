"""Metrics of ``benchmarks/mapping.py``: pure functions of arrays (labels, probabilities, latents).

Label metrics are taken on the query cells whose type the reference has; the novelty AUROC compares the
query cells of a type the reference lacks (positives) with the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.neighbors import NearestNeighbors

K_NEIGHBOURS = 15
ECE_BINS = 15


def accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Share of cells whose predicted label equals the true one."""
    truth, predicted = np.asarray(truth).astype(str), np.asarray(predicted).astype(str)
    return float(np.mean(truth == predicted))


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Unweighted mean over the true labels of the per-label F1.

    Averaged over the labels present in ``truth`` only (a label that is only ever predicted is a
    false positive of some true label, not a class of its own).
    """
    truth, predicted = np.asarray(truth).astype(str), np.asarray(predicted).astype(str)
    return float(f1_score(truth, predicted, labels=np.unique(truth), average="macro", zero_division=0))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE of the confidence (max probability) with ``n_bins`` equal-width bins on [0, 1].

    ``sum_b (n_b / n) * |mean(correct in b) - mean(confidence in b)|``; bin ``b`` holds the confidences
    in ``((b-1)/B, b/B]`` (the first bin also holds 0).

    Parameters
    ----------
    confidence
        ``(n_cells,)`` values in [0, 1].
    correct
        ``(n_cells,)`` booleans: the predicted label is right.
    n_bins
        Number of bins.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        rows = bins == b
        total += rows.mean() * abs(correct[rows].mean() - confidence[rows].mean())
    return float(total)


def novelty_auroc(score: np.ndarray, novel: np.ndarray) -> float | None:
    """AUROC of ``score`` ``(n_cells,)`` for telling ``novel`` cells from the rest (``None`` if one class)."""
    novel = np.asarray(novel, dtype=bool)
    if novel.all() or not novel.any():
        return None
    return float(roc_auc_score(novel, np.asarray(score, dtype=np.float64)))


def mixing(reference_latent: np.ndarray, query_latent: np.ndarray, k: int = K_NEIGHBOURS) -> float:
    """Query–reference mixing in the joint latent; 1 is perfect mixing, 0 none.

    For each query cell, the share of reference cells among its ``k`` nearest neighbours (itself
    excluded) among all reference and query cells, divided by the reference share of all other cells
    (``n_ref / (n_ref + n_query - 1)``); the mean over query cells.

    Parameters
    ----------
    reference_latent
        ``(n_ref, n_latent)``.
    query_latent
        ``(n_query, n_latent)``.
    k
        Number of neighbours.
    """
    joint = np.vstack([reference_latent, query_latent])
    n_ref, n_query = reference_latent.shape[0], query_latent.shape[0]
    _, neighbours = NearestNeighbors(n_neighbors=k).fit(joint).kneighbors()
    share = (neighbours[n_ref:] < n_ref).mean(1)
    return float(share.mean() / (n_ref / (n_ref + n_query - 1)))


def knn_probabilities(
    reference_latent: np.ndarray,
    reference_labels: np.ndarray,
    query_latent: np.ndarray,
    k: int = K_NEIGHBOURS,
) -> pd.DataFrame:
    """Label shares among each query cell's ``k`` nearest reference cells: ``(n_query, n_labels)``."""
    labels = np.asarray(reference_labels).astype(str)
    _, neighbours = NearestNeighbors(n_neighbors=k).fit(reference_latent).kneighbors(query_latent)
    names = np.unique(labels)
    codes = np.searchsorted(names, labels)[neighbours]
    shares = np.stack([(codes == c).mean(1) for c in range(len(names))], axis=1)
    return pd.DataFrame(shares, columns=names)


def label_scores(
    probabilities: pd.DataFrame, truth: np.ndarray, known: np.ndarray, novelty: np.ndarray | None = None
) -> dict[str, Any]:
    """Accuracy, macro F1 and ECE on the ``known`` cells, and the novelty AUROC.

    Parameters
    ----------
    probabilities
        ``(n_query, n_labels)``; the predicted label is the column of the maximum, the confidence the
        maximum. A column named ``"unknown"`` counts as a label that is never right on known cells.
    truth
        ``(n_query,)`` true labels.
    known
        ``(n_query,)`` booleans: the type exists in the reference.
    novelty
        ``(n_query,)`` novelty score; default ``1 - max probability``.
    """
    values = probabilities.to_numpy(dtype=np.float64)
    columns = np.asarray(probabilities.columns).astype(str)
    predicted = columns[values.argmax(1)]
    confidence = values.max(1)
    truth = np.asarray(truth).astype(str)
    known = np.asarray(known, dtype=bool)
    score = 1.0 - confidence if novelty is None else np.asarray(novelty, dtype=np.float64)
    return {
        "accuracy": accuracy(truth[known], predicted[known]),
        "macro_f1": macro_f1(truth[known], predicted[known]),
        "ece": expected_calibration_error(confidence[known], predicted[known] == truth[known]),
        "novelty_auroc": novelty_auroc(score, ~known),
        "n_known": int(known.sum()),
        "n_novel": int((~known).sum()),
    }
