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
    masked
        Whether the modality has a feature mask: the first layer then also reads which features were
        not measured (their indicator times learned weights ``missing_weight``, ``(n_input, n_hidden)``,
        starting at zero), so a missing feature reads differently from a zero count.
    """

    def __init__(
        self,
        n_input: int,
        n_latent: int,
        n_hidden: int,
        n_layers: int,
        dropout_rate: float,
        masked: bool = False,
    ) -> None:
        super().__init__()
        bound = 1 / math.sqrt(n_input)
        self.input_weight = nn.Parameter(torch.empty(n_input, n_hidden).uniform_(-bound, bound))
        self.input_bias = nn.Parameter(torch.empty(n_hidden).uniform_(-bound, bound))
        self.input_activation = activation(n_hidden, dropout_rate)
        self.body = CovariateMLP(n_hidden, n_hidden, n_layers - 1, dropout_rate)
        self.head = nn.Linear(n_hidden, 2 * n_latent)
        # Zeros, drawn from no random stream: the other weights start as they would without a mask.
        self.missing_weight = nn.Parameter(torch.zeros(n_input, n_hidden)) if masked else None
        # A query model's per-new-batch shift of the first hidden layer (scamort.query_surgery), or None.
        self.batch_shift: nn.Module | None = None
        # A query model's per-new-batch, per-feature shift of the log1p counts, or None.
        self.gene_shift: nn.Module | None = None

    def forward(
        self,
        counts: SparseBatch,
        measured: torch.Tensor | None = None,
        batch_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert for ``counts`` of ``(batch, n_input)``: mean and log-variance ``(batch, n_latent)``.

        ``measured`` ``(batch, n_input)`` bool marks the measured features (None: all); counts
        are read at measured features only. ``batch_index`` ``(batch,)`` is read by a query model's
        batch shift only."""
        weights = torch.log1p(counts.values)
        if self.gene_shift is not None and batch_index is not None:
            weights = self.gene_shift(weights, counts.row, counts.col, batch_index)
        if measured is not None:  # whatever is stored at an unmeasured feature is not read
            weights = torch.where(measured[counts.row, counts.col], weights, torch.zeros_like(weights))
        h = F.embedding_bag(
            counts.col,
            self.input_weight,
            counts.row_offsets,
            mode="sum",
            per_sample_weights=weights,
        )
        if measured is not None and self.missing_weight is not None:
            h = h + (~measured).to(h.dtype) @ self.missing_weight
        h = h + self.input_bias
        if self.batch_shift is not None and batch_index is not None:
            h = self.batch_shift(h, batch_index)
        h = self.input_activation(h)
        if len(self.body.layers):
            no_covariates = h.new_zeros(h.shape[0], 0)
            h = self.body(h, no_covariates.long(), no_covariates)
        mean, log_variance = self.head(h).chunk(2, dim=-1)
        return mean, log_variance.clamp(*LOG_VARIANCE_RANGE)
