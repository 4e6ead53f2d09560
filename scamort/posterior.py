"""Diagonal Gaussian posteriors q(z | x) and the divergences the ELBO and the alignment term use."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scamort.nn.product_of_experts import MIN_LOG_VARIANCE

__all__ = [
    "Posterior",
    "gaussian_kl",
    "jeffreys_divergence",
    "single_expert_posteriors",
    "standard_normal_log_prob",
]


@dataclass(frozen=True)
class Posterior:
    """A diagonal Gaussian q(z | x): ``mean`` and ``log_variance`` of shape ``(batch, n_latent)``."""

    mean: torch.Tensor
    log_variance: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        """Standard deviation, shape ``(batch, n_latent)``."""
        return torch.exp(0.5 * self.log_variance)

    def rsample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A reparameterised sample, shape ``(batch, n_latent)``."""
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log q(z)`` summed over latent dimensions; ``z`` is ``(..., batch, n_latent)``."""
        return _normal_log_prob(z, self.mean, self.log_variance)


def _normal_log_prob(z: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    log_two_pi = 1.8378770664093453
    return -0.5 * ((z - mean).square() * torch.exp(-log_variance) + log_variance + log_two_pi).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over the last dimension."""
    return _normal_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))


def gaussian_kl(posterior: Posterior) -> torch.Tensor:
    """KL(q || N(0, I)) per cell, shape ``(batch,)``."""
    return 0.5 * (posterior.mean.square() + posterior.log_variance.exp() - 1 - posterior.log_variance).sum(-1)


def jeffreys_divergence(first: Posterior, second: Posterior) -> torch.Tensor:
    """Symmetric KL, ``KL(first || second) + KL(second || first)``, per cell, shape ``(batch,)``.

    For diagonal Gaussians: ``1/2 sum_d [(v1 + (m1 - m2)^2) / v2 + (v2 + (m1 - m2)^2) / v1 - 2]``.
    """
    squared = (first.mean - second.mean).square()
    difference = first.log_variance - second.log_variance
    return 0.5 * (
        (difference.exp() + squared * torch.exp(-second.log_variance))
        + ((-difference).exp() + squared * torch.exp(-first.log_variance))
        - 2
    ).sum(-1)


def single_expert_posteriors(mean: torch.Tensor, log_variance: torch.Tensor) -> Posterior:
    """Each expert multiplied by the prior alone: ``(n_experts, batch, n_latent)`` means and
    log-variances of ``N(mu_m, var_m) × N(0, I)`` (normalised), as :func:`product_of_experts` would give
    for a cell with that one modality."""
    precision = torch.exp(-log_variance.clamp(min=MIN_LOG_VARIANCE))
    return Posterior(precision * mean / (1 + precision), -torch.log1p(precision))
