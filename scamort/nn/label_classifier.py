"""The cell-label classifier of a model with labels, read from the latent, with its calibration state.

A small MLP gives logits over the reference labels from a cell's latent (the shared dimensions). Beside
its weights it keeps, as buffers (saved with the weights, carried to query models with the module):

- ``class_weights`` ``(n_labels,)``: per-label weights of the training loss (balanced classes);
- ``temperature`` ``()``: the softmax temperature fitted on held-out labelled cells;
- ``class_means`` ``(n_labels, n_latent)`` and ``precision`` ``(n_latent, n_latent)``: a Gaussian per
  label with one shared covariance, fitted on the labelled cells' posterior means;
- ``novelty`` ``(2,)``: intercept and slope of the logistic map from the log of the smallest
  Mahalanobis distance to a label's Gaussian to the probability that the cell is of a reference type;
- ``calibrated`` ``()``: 1 once those were fitted (:mod:`scamort.label_calibration`), else 0 (then the
  temperature is 1 and every cell counts as of a reference type).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LabelClassifier"]


class LabelClassifier(nn.Module):
    """Logits over ``n_labels`` cell labels from a latent of width ``n_latent``.

    Parameters
    ----------
    n_latent
        Width of the latent read (the model's shared dimensions).
    n_labels
        Number of reference labels.
    n_hidden
        Width of the hidden layer.
    """

    class_weights: torch.Tensor
    temperature: torch.Tensor
    class_means: torch.Tensor
    precision: torch.Tensor
    novelty: torch.Tensor
    calibrated: torch.Tensor

    def __init__(self, n_latent: int, n_labels: int, n_hidden: int = 128) -> None:
        super().__init__()
        self.network = nn.Sequential(nn.Linear(n_latent, n_hidden), nn.ReLU(), nn.Linear(n_hidden, n_labels))
        self.register_buffer("class_weights", torch.ones(n_labels))
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("class_means", torch.zeros(n_labels, n_latent))
        self.register_buffer("precision", torch.eye(n_latent))
        self.register_buffer("novelty", torch.zeros(2))
        self.register_buffer("calibrated", torch.zeros(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits ``(batch, n_labels)`` for ``z`` of ``(batch, n_latent)``."""
        return self.network(z)

    def loss(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Class-weighted cross-entropy per cell ``(batch,)``; 0 for unlabelled cells (code -1).

        ``z`` ``(batch, n_latent)``, ``labels`` ``(batch,)`` int64."""
        labelled = labels >= 0
        safe = torch.where(labelled, labels, torch.zeros_like(labels))
        loss = F.cross_entropy(self(z), safe, reduction="none") * self.class_weights[safe]
        return torch.where(labelled, loss, torch.zeros_like(loss))

    def distance(self, z: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of ``z`` ``(batch, n_latent)`` to each label's Gaussian under
        the shared covariance, ``(batch, n_labels)``."""
        difference = z[:, None, :] - self.class_means[None]
        return torch.einsum("bkd,de,bke->bk", difference, self.precision, difference).clamp(min=0)

    def in_distribution(self, z: torch.Tensor) -> torch.Tensor:
        """Probability ``(batch,)`` that each cell of ``z`` ``(batch, n_latent)`` is of a reference
        type: ``sigmoid(a + b log d)`` with ``d`` the smallest squared Mahalanobis distance to a
        label's Gaussian and ``(a, b)`` the fitted ``novelty``; 1 before calibration."""
        if not bool(self.calibrated):
            return z.new_ones(z.shape[0])
        nearest = self.distance(z).min(1).values
        return torch.sigmoid(self.novelty[0] + self.novelty[1] * torch.log(nearest + 1e-6))

    def probabilities(self, z: torch.Tensor) -> torch.Tensor:
        """Calibrated label probabilities ``(batch, n_labels)``: the softmax of the logits over the
        fitted temperature; each row sums to 1. The novelty score is separate (:meth:`novelty_score`),
        since folding it into the probabilities makes them underconfident on shifted query cells."""
        return torch.softmax(self(z) / self.temperature, dim=1)

    def novelty_score(self, z: torch.Tensor) -> torch.Tensor:
        """Probability ``(batch,)`` that each cell of ``z`` ``(batch, n_latent)`` is of a type absent
        from the reference: ``1 -`` :meth:`in_distribution`."""
        return 1.0 - self.in_distribution(z)
