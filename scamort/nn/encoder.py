"""A modality's encoder: sparse counts -> a diagonal Gaussian expert over the latent space."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scamort.data.sparse_batch import SparseBatch
from scamort.nn.mlp import CovariateMLP, activation

__all__ = ["GaussianEncoder", "LOG_VARIANCE_RANGE"]

#: Log-variances are kept in this range so that the experts' precisions stay finite in float32.
LOG_VARIANCE_RANGE = (-12.0, 8.0)


class GaussianEncoder(nn.Module):
    """``log1p(x)`` -> MLP -> (mean, log-variance) of a Gaussian expert.

    The first layer multiplies the sparse ``log1p(x)`` by its weights with ``embedding_bag`` (a
    sparse-dense product), so its cost grows with the nonzeros, not with the number of features.

    Parameters
    ----------
    n_input
        Number of features of the modality.
    n_latent
        Latent dimension.
    n_hidden, n_layers, dropout_rate
        Shape of the hidden MLP (``n_layers >= 1``, the first of them reading the counts).
    """

    def __init__(
        self, n_input: int, n_latent: int, n_hidden: int, n_layers: int, dropout_rate: float
    ) -> None:
        super().__init__()
        bound = 1 / math.sqrt(n_input)
        self.input_weight = nn.Parameter(torch.empty(n_input, n_hidden).uniform_(-bound, bound))
        self.input_bias = nn.Parameter(torch.empty(n_hidden).uniform_(-bound, bound))
        self.input_activation = activation(n_hidden, dropout_rate)
        self.body = CovariateMLP(n_hidden, n_hidden, n_layers - 1, dropout_rate)
        self.head = nn.Linear(n_hidden, 2 * n_latent)

    def forward(self, counts: SparseBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert for ``counts`` of ``(batch, n_input)``: mean and log-variance ``(batch, n_latent)``."""
        h = F.embedding_bag(
            counts.col,
            self.input_weight,
            counts.row_offsets,
            mode="sum",
            per_sample_weights=torch.log1p(counts.values),
        )
        h = self.input_activation(h + self.input_bias)
        if len(self.body.layers):
            no_covariates = h.new_zeros(h.shape[0], 0)
            h = self.body(h, no_covariates.long(), no_covariates)
        mean, log_variance = self.head(h).chunk(2, dim=-1)
        return mean, log_variance.clamp(*LOG_VARIANCE_RANGE)
