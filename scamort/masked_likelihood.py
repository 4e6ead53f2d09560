"""Likelihoods over the measured features of each cell only (feature-level missingness).

Two pieces, used by :class:`scamort.module.VAE` for a modality with a feature mask:

- :func:`renormalised`: a library-scaled decoder gives means ``library × p_g`` with proportions ``p``
  summing to (about) 1 over *all* features, but a cell's observed library covers only its measured
  features. So its means become ``library × p_g / sum_{h measured} p_h``: the measured features share
  the observed library, and an unmeasured feature is imputed at the same scale.
- :func:`masked_log_prob_rows`: ``sum_{g measured} log p(x_g)`` per cell, from the dense elementwise
  log-probability (every distribution's ``log_prob`` is checked against scipy oracles), so nothing
  unmeasured enters.
- :func:`dropped_panel` (*panel dropout*, training only): with some probability a cell's encoder reads
  only the features that it *and* another cell of the minibatch measured (when that leaves any), while
  every measured feature is still reconstructed. The encoder so learns to place a cell alike whichever
  panel measured it, and cells of batches with smaller panels mix with the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scamort.data.sparse_batch import SparseBatch
from scamort.distributions import (
    Bernoulli,
    CountDistribution,
    NegativeBinomial,
    NegativeBinomialMixture,
    Poisson,
    SoftmaxNegativeBinomial,
    ZeroInflatedNegativeBinomial,
)

__all__ = ["dropped_panel", "log_measured_share", "masked_log_prob_rows", "renormalised"]


def log_measured_share(log_mean: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
    """``log(sum_{g measured} m_g / sum_g m_g)`` per row for log means ``(n_rows, n_features)`` and a
    mask of the same shape (each row with at least one measured feature); ``(n_rows,)``."""
    masked = log_mean.masked_fill(~measured, float("-inf"))
    return torch.logsumexp(masked, dim=-1) - torch.logsumexp(log_mean, dim=-1)


def renormalised(distribution: CountDistribution, measured: torch.Tensor) -> CountDistribution:
    """``distribution`` with each row's means divided by the share of its mean on measured features
    (``measured`` ``(n_rows, n_features)`` bool); Bernoulli distributions are returned unchanged."""
    if isinstance(distribution, SoftmaxNegativeBinomial):
        share = log_measured_share(distribution.logits, measured)
        return SoftmaxNegativeBinomial(
            distribution.logits, distribution.log_library - share, distribution.log_theta
        )
    if isinstance(distribution, ZeroInflatedNegativeBinomial):
        shift = log_measured_share(distribution.log_mu, measured).unsqueeze(-1)
        return ZeroInflatedNegativeBinomial(
            distribution.log_mu - shift, distribution.log_theta, distribution.zi_logits
        )
    if isinstance(distribution, NegativeBinomial):
        shift = log_measured_share(distribution.log_mu, measured).unsqueeze(-1)
        return NegativeBinomial(distribution.log_mu - shift, distribution.log_theta)
    if isinstance(distribution, Poisson):
        shift = log_measured_share(distribution.log_mu, measured).unsqueeze(-1)
        return Poisson(distribution.log_mu - shift)
    if isinstance(distribution, NegativeBinomialMixture):
        logits = distribution.mixture_logits
        log_mean = torch.logaddexp(
            distribution.log_mu_background - F.softplus(-logits),
            distribution.log_mu_foreground - F.softplus(logits),
        )
        shift = log_measured_share(log_mean, measured).unsqueeze(-1)
        return NegativeBinomialMixture(
            distribution.log_mu_background - shift,
            distribution.log_mu_foreground - shift,
            distribution.log_theta,
            logits,
        )
    if isinstance(distribution, Bernoulli):
        return distribution
    raise TypeError(f"No renormalisation for {type(distribution).__name__}.")


def masked_log_prob_rows(
    distribution: CountDistribution, counts: SparseBatch, measured: torch.Tensor | None
) -> torch.Tensor:
    """Per-cell ``sum_{g measured} log p(x_g)``, ``(n_rows,)``; ``counts`` ``(n_rows, n_features)`` must
    hold no entries where ``measured`` ``(n_rows, n_features)`` is False. ``measured=None`` (every
    feature measured) is ``distribution.log_prob_rows(counts)``, the fast sparse sum."""
    if measured is None:
        return distribution.log_prob_rows(counts)
    log_prob = distribution.log_prob(counts.to_dense())
    return torch.where(measured, log_prob, torch.zeros_like(log_prob)).sum(-1)


def dropped_panel(measured: torch.Tensor | None, probability: float) -> torch.Tensor | None:
    """The encoder's mask under panel dropout: ``measured`` ``(batch, n_features)`` bool with each
    row, with ``probability``, intersected with another (random) row when that leaves a feature;
    ``measured`` itself when it is None or ``probability`` is 0."""
    if measured is None or probability <= 0:
        return measured
    n = measured.shape[0]
    narrowed = measured & measured[torch.randperm(n, device=measured.device)]
    dropped = torch.rand(n, device=measured.device) < probability
    return torch.where((dropped & narrowed.any(1)).unsqueeze(1), narrowed, measured)
