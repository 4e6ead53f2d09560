"""A modality's library-size head: latent z (+ covariates) -> a Gaussian over the cell's log library size.

Count decoders take each cell's observed library size as given, so the latent carries no information
about it. A cell that lacks a modality has no library for it; to impute expected counts for such a
cell (e.g. protein from RNA) the model needs one. The head learns ``log library | z`` on the cells
that have the modality. It reads ``z`` detached, so training it never changes the encoders, the
decoders or the ELBO: it is a regression fitted alongside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from scamort.nn.mlp import CovariateMLP

__all__ = ["LibraryHead"]

LOG_TWO_PI = math.log(2 * math.pi)


class LibraryHead(nn.Module):
    """``log l ~ N(mean(z, covariates), variance[batch])`` for one modality.

    Parameters
    ----------
    n_latent
        Latent dimension.
    n_hidden
        Width of the one hidden layer.
    n_batch
        Number of batches (one residual variance each).
    categorical_sizes, n_continuous
        Covariates injected into the hidden layer (batch first, if any), as in the decoders.
    """

    def __init__(
        self,
        n_latent: int,
        n_hidden: int,
        n_batch: int,
        categorical_sizes: Sequence[int],
        n_continuous: int,
    ) -> None:
        super().__init__()
        self.body = CovariateMLP(n_latent, n_hidden, 1, 0.0, categorical_sizes, n_continuous)
        self.head = nn.Linear(n_hidden, 1)
        self.log_variance = nn.Parameter(torch.zeros(n_batch))

    @torch.no_grad()
    def initialize(self, log_library: torch.Tensor) -> None:
        """Start at the data's mean and variance of ``log_library`` (shape ``(n_cells,)``, measured
        cells), so that training refines a sensible prediction instead of walking to it."""
        if log_library.numel() == 0:
            return
        values = log_library.to(self.head.bias.dtype)
        self.head.bias.fill_(float(values.mean()))
        variance = float(values.var()) if values.numel() > 1 else 1.0
        self.log_variance.fill_(math.log(max(variance, 1e-4)))

    def forward(
        self,
        z: torch.Tensor,
        *,
        batch_index: torch.Tensor,
        categorical: torch.Tensor,
        continuous: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``log l``, each ``(batch,)``, for ``z`` of ``(batch, n_latent)``."""
        mean = self.head(self.body(z, categorical, continuous)).squeeze(-1)
        return mean, self.log_variance[batch_index]

    def negative_log_likelihood(
        self,
        z: torch.Tensor,
        log_library: torch.Tensor,
        *,
        batch_index: torch.Tensor,
        categorical: torch.Tensor,
        continuous: torch.Tensor,
    ) -> torch.Tensor:
        """``-log N(log_library; mean, variance)`` per cell, ``(batch,)``; ``z`` is detached here."""
        mean, log_variance = self(
            z.detach(), batch_index=batch_index, categorical=categorical, continuous=continuous
        )
        return 0.5 * ((log_library - mean).square() * torch.exp(-log_variance) + log_variance + LOG_TWO_PI)
