"""A modality's decoder: latent z (+ covariates, library size) -> a count distribution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scamort.distributions import (
    Bernoulli,
    CountDistribution,
    NegativeBinomial,
    Poisson,
    ZeroInflatedNegativeBinomial,
)
from scamort.nn.mlp import CovariateMLP

__all__ = ["CountDecoder", "DISPERSIONS"]

#: How the negative binomial's inverse dispersion is shared.
DISPERSIONS = ("gene", "gene-batch")


class CountDecoder(nn.Module):
    """Decode z into one modality's distribution.

    Count likelihoods (nb, zinb, poisson) have mean ``library × softmax(h)``: the decoder predicts
    expression proportions and the observed library size scales them. Bernoulli predicts logits.

    Parameters
    ----------
    n_latent, n_output
        Latent dimension and number of features.
    likelihood
        ``"nb"``, ``"zinb"``, ``"poisson"`` or ``"bernoulli"``.
    dispersion
        ``"gene"`` (one inverse dispersion per feature) or ``"gene-batch"`` (per feature and batch).
    n_batch
        Number of batches (for gene-batch dispersion).
    n_hidden, n_layers
        Shape of the hidden MLP.
    categorical_sizes, n_continuous
        Covariates injected into every hidden layer (batch first, if any).
    """

    def __init__(
        self,
        n_latent: int,
        n_output: int,
        *,
        likelihood: str,
        dispersion: str,
        n_batch: int,
        n_hidden: int,
        n_layers: int,
        categorical_sizes: Sequence[int],
        n_continuous: int,
    ) -> None:
        super().__init__()
        self.likelihood = likelihood
        self.body = CovariateMLP(n_latent, n_hidden, n_layers, 0.0, categorical_sizes, n_continuous)
        self.head = nn.Linear(n_hidden, n_output)
        self.zero_inflation_head = nn.Linear(n_hidden, n_output) if likelihood == "zinb" else None
        n_rows = n_batch if dispersion == "gene-batch" else 1
        self.dispersion = dispersion
        self.log_theta = nn.Parameter(torch.zeros(n_rows, n_output)) if likelihood in ("nb", "zinb") else None

    def forward(
        self,
        z: torch.Tensor,
        *,
        log_library: torch.Tensor,
        batch_index: torch.Tensor,
        categorical: torch.Tensor,
        continuous: torch.Tensor,
    ) -> CountDistribution:
        """Distribution of the counts given ``z`` of shape ``(batch, n_latent)``.

        ``log_library`` and ``batch_index`` are ``(batch,)``; covariates as in :class:`CovariateMLP`.
        """
        h = self.body(z, categorical, continuous)
        logits = self.head(h)
        if self.likelihood == "bernoulli":
            return Bernoulli(logits)
        log_mu = F.log_softmax(logits, dim=-1) + log_library.unsqueeze(-1)
        if self.likelihood == "poisson":
            return Poisson(log_mu)
        log_theta = self.log_theta[batch_index] if self.dispersion == "gene-batch" else self.log_theta[0]
        if self.likelihood == "nb":
            return NegativeBinomial(log_mu, log_theta)
        return ZeroInflatedNegativeBinomial(log_mu, log_theta, self.zero_inflation_head(h))

    def proportions(self, z: torch.Tensor, **covariates: torch.Tensor) -> torch.Tensor:
        """Expected proportions (rows sum to 1; probabilities for Bernoulli), ``(batch, n_output)``."""
        h = self.body(z, covariates["categorical"], covariates["continuous"])
        logits = self.head(h)
        if self.likelihood == "bernoulli":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=-1)
