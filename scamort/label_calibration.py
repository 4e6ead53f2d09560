"""Learning labels: codes attached to the data, the loss weighted, the classifier calibrated after training.

A model built with ``labels_key`` learns its labels as scANVI does: a classifier
(``scamort.nn.label_classifier.LabelClassifier``, a submodule of the VAE) reads each cell's latent
and its class-weighted cross-entropy on the labelled cells joins the training objective (cells with a
missing label are unlabelled: they train the VAE only). At the end of :meth:`scamort.Model.train`,
``calibrate`` fits, from the posterior means of the labelled cells:

1. a Gaussian per label with one shared covariance (linear discriminant analysis), on the training
   split;
2. the softmax temperature, by the likelihood of the held-out labelled cells (the validation split;
   the training split when it has no labelled cell);
3. the novelty map: the probability that a cell is of a reference type as a logistic function of the
   log of its smallest squared Mahalanobis distance to a label's Gaussian, fitted to tell held-out
   labelled cells from *simulated novel cells*, each label's held-out cells scored against the other
   labels' Gaussians only (each label in turn plays a type absent from the reference), both groups
   weighted equally.

All of it lives in the classifier's buffers, so it is saved with the weights and travels with the module
to query models.
"""

from __future__ import annotations

from dataclasses import replace

import anndata as ad
import numpy as np
import torch

from scamort import inference
from scamort.data import CellData, Registry
from scamort.data.backed import BackedCellData, EncodedCells
from scamort.data.registry import label_codes
from scamort.module import VAE
from scamort.nn.label_classifier import LabelClassifier

__all__ = [
    "DEFAULT_LABEL_GRADIENT",
    "DEFAULT_LABEL_WEIGHT",
    "attach_labels",
    "calibrate",
    "initialize_classes",
]

#: Weight of the label classification loss per labelled cell (scANVI's ``classification_ratio``).
DEFAULT_LABEL_WEIGHT = 50.0

#: Whether the classification loss trains the encoders too (as scANVI's does) or the classifier only.
DEFAULT_LABEL_GRADIENT = True

#: Relative ridge added to the shared covariance (times its mean variance) before it is inverted.
COVARIANCE_RIDGE = 1e-3

#: Fewest held-out labelled cells to fit the temperature and the novelty map on (else the training split).
MIN_HELD_OUT = 20


def attach_labels(data: EncodedCells, adata: ad.AnnData, registry: Registry) -> EncodedCells:
    """``data`` with the label codes of ``adata.obs[registry.labels_key]`` (``-1``: unlabelled, also
    for labels the registry does not know and when the column is absent); unchanged without labels."""
    if registry.labels_key is None:
        return data
    labels = torch.as_tensor(label_codes(adata, registry.labels_key, registry.label_categories))
    if isinstance(data, BackedCellData):
        return replace(data, covariates=replace(data.covariates, labels=labels))
    return replace(data, labels=labels)


def _labels(data: EncodedCells) -> np.ndarray | None:
    cells = data.covariates if isinstance(data, BackedCellData) else data
    assert isinstance(cells, CellData)
    return None if cells.labels is None else cells.labels.cpu().numpy()


def initialize_classes(module: VAE, data: EncodedCells) -> None:
    """Balanced class weights ``n_labelled / (n_labels × n_k)`` for the classifier's loss (1 for a
    label without cells), from the labelled cells of ``data``."""
    classifier, labels = module.label_classifier, _labels(data)
    if classifier is None or labels is None:
        return
    counts = np.bincount(labels[labels >= 0], minlength=classifier.class_weights.shape[0]).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 1.0)
    classifier.class_weights.copy_(torch.as_tensor(weights, dtype=torch.float32))


def _fit_gaussians(z: np.ndarray, labels: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means ``(n_labels, d)`` (the overall mean for a label without cells) and the precision
    ``(d, d)`` of the pooled within-class covariance, ridged."""
    means = np.tile(z.mean(0), (n_labels, 1))
    for k in np.unique(labels):
        means[k] = z[labels == k].mean(0)
    residual = z - means[labels]
    covariance = residual.T @ residual / max(len(z) - len(np.unique(labels)), 1)
    covariance += COVARIANCE_RIDGE * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    return means, np.linalg.inv(covariance)


def _fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the mean negative log-likelihood of ``labels`` under
    ``softmax(logits / T)`` (a bounded search over ``log T``)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(labels)), labels].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded").x))


def _fit_novelty(distance: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Intercept and slope of ``P(reference type) = sigmoid(a + b log d)``, ``d`` the smallest squared
    Mahalanobis distance: held-out labelled cells (all labels) against the same cells scored without
    their own label, each group of equal total weight. ``distance`` is ``(n_cells, n_labels)``."""
    from sklearn.linear_model import LogisticRegression

    known = np.log(distance.min(1) + 1e-6)
    others = distance.copy()
    others[np.arange(len(labels)), labels] = np.inf
    present = np.unique(labels)
    if len(present) < 2:  # one label: nothing plays a novel type; every cell is of the reference
        return 10.0, 0.0
    novel = np.log(others.min(1) + 1e-6)
    x = np.concatenate([known, novel])[:, None]
    y = np.concatenate([np.ones(len(known)), np.zeros(len(novel))])
    fit = LogisticRegression(C=100.0).fit(x, y)
    return float(fit.intercept_[0]), float(fit.coef_[0, 0])


@torch.no_grad()
def calibrate(
    module: VAE, data: EncodedCells, train_indices: np.ndarray, validation_indices: np.ndarray
) -> None:
    """Fit the classifier's Gaussians, temperature and novelty map (see the module docstring) from the
    labelled cells of ``data`` split as trained; a model without labels is left as it is."""
    classifier, labels = module.label_classifier, _labels(data)
    if classifier is None or labels is None:
        return
    assert isinstance(classifier, LabelClassifier)
    train = train_indices[labels[train_indices] >= 0]
    held_out = validation_indices[labels[validation_indices] >= 0]
    if len(held_out) < MIN_HELD_OUT:
        held_out = train
    if len(train) == 0:
        return
    device = next(module.parameters()).device
    cells = np.union1d(train, held_out)
    mean, _ = inference.latent(module, data.to(device), cells)
    z = mean[:, : module.config.n_shared].astype(np.float64)
    rows = {cell: i for i, cell in enumerate(cells)}
    train_rows = np.array([rows[c] for c in train])
    held_rows = np.array([rows[c] for c in held_out])
    n_labels = classifier.class_means.shape[0]
    means, precision = _fit_gaussians(z[train_rows], labels[train], n_labels)
    classifier.class_means.copy_(torch.as_tensor(means, dtype=torch.float32))
    classifier.precision.copy_(torch.as_tensor(precision, dtype=torch.float32))
    held_z = torch.as_tensor(z[held_rows], dtype=torch.float32, device=device)
    classifier.eval()
    logits = classifier(held_z).double().cpu().numpy()
    classifier.temperature.fill_(_fit_temperature(logits, labels[held_out]))
    distance = classifier.distance(held_z).double().cpu().numpy()
    intercept, slope = _fit_novelty(distance, labels[held_out])
    classifier.novelty.copy_(torch.tensor([intercept, slope]))
    classifier.calibrated.fill_(1.0)
