"""The VAE: per-modality encoders -> product of experts -> z -> per-modality decoders -> ELBO terms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from scamort.data.cell_data import Minibatch
from scamort.distributions import CountDistribution
from scamort.nn import CountDecoder, GaussianEncoder, product_of_experts

__all__ = ["LossTerms", "ModuleConfig", "Posterior", "VAE", "gaussian_kl"]


@dataclass(frozen=True)
class ModuleConfig:
    """Architecture of a :class:`VAE`.

    Attributes
    ----------
    modalities
        ``(name, n_features, likelihood)`` per modality, in model order.
    n_latent, n_hidden, n_layers, dropout_rate
        Latent dimension and MLP shape (dropout applies to encoders only).
    dispersion
        ``"gene"`` or ``"gene-batch"``.
    modality_dropout
        During training, the probability that a cell's posterior is formed from one of its measured
        modalities only (chosen at random) while all of them are still reconstructed. This trains each
        expert to explain every modality on its own, which is what cells measured in one modality
        and cross-modal imputation need. No effect with a single modality.
    n_batch
        Number of batches.
    categorical_sizes
        Category counts of decoder covariates (batch first when there is a batch key).
    n_continuous
        Number of continuous covariates.
    """

    modalities: tuple[tuple[str, int, str], ...]
    n_latent: int = 10
    n_hidden: int = 128
    n_layers: int = 1
    dropout_rate: float = 0.1
    dispersion: str = "gene"
    modality_dropout: float = 0.0
    n_batch: int = 1
    categorical_sizes: tuple[int, ...] = field(default_factory=tuple)
    n_continuous: int = 0


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


@dataclass(frozen=True)
class LossTerms:
    """Per-cell ELBO terms.

    Attributes
    ----------
    reconstruction
        Modality name -> ``log p(x_m | z)`` per cell, shape ``(batch,)``, zero for absent modalities.
    kl
        KL(q(z|x) || p(z)) per cell, shape ``(batch,)``.
    """

    reconstruction: dict[str, torch.Tensor]
    kl: torch.Tensor

    @property
    def total_reconstruction(self) -> torch.Tensor:
        """Sum of the modalities' reconstruction terms, shape ``(batch,)``."""
        terms = list(self.reconstruction.values())
        return terms[0] if len(terms) == 1 else torch.stack(terms).sum(0)

    def elbo(self, kl_weight: float = 1.0) -> torch.Tensor:
        """Per-cell (weighted) ELBO, shape ``(batch,)``."""
        return self.total_reconstruction - kl_weight * self.kl


class VAE(nn.Module):
    """A multimodal VAE with a product-of-experts posterior.

    The contract mirrors scvi-tools' modules: :meth:`posterior` (inference), :meth:`generative`
    (returns real distribution objects), :meth:`loss_terms` (a typed record of per-cell terms).
    """

    def __init__(self, config: ModuleConfig) -> None:
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        for name, n_features, likelihood in config.modalities:
            self.encoders[name] = GaussianEncoder(
                n_features, config.n_latent, config.n_hidden, config.n_layers, config.dropout_rate
            )
            self.decoders[name] = CountDecoder(
                config.n_latent,
                n_features,
                likelihood=likelihood,
                dispersion=config.dispersion,
                n_batch=config.n_batch,
                n_hidden=config.n_hidden,
                n_layers=config.n_layers,
                categorical_sizes=config.categorical_sizes,
                n_continuous=config.n_continuous,
            )

    @property
    def modality_names(self) -> tuple[str, ...]:
        """Modality names in model order."""
        return tuple(name for name, _, _ in self.config.modalities)

    def posterior(
        self,
        batch: Minibatch,
        modalities: Sequence[str] | None = None,
        expert_mask: torch.Tensor | None = None,
    ) -> Posterior:
        """q(z | x): the product of the prior and the experts of ``modalities`` (default all) that
        each cell has; ``expert_mask`` ``(n_modalities, batch)`` overrides which experts are used."""
        names = self.modality_names if modalities is None else tuple(modalities)
        means, log_variances = [], []
        for name in names:
            mean, log_variance = self.encoders[name](batch.modalities[name].counts)
            means.append(mean)
            log_variances.append(log_variance)
        if expert_mask is None:
            expert_mask = torch.stack([batch.modalities[name].present for name in names])
        mean, log_variance = product_of_experts(torch.stack(means), torch.stack(log_variances), expert_mask)
        return Posterior(mean, log_variance)

    def _dropped_expert_mask(self, batch: Minibatch) -> torch.Tensor | None:
        """Training-time expert mask with modality dropout (see :class:`ModuleConfig`), or None."""
        if not self.training or self.config.modality_dropout <= 0 or len(self.modality_names) < 2:
            return None
        present = torch.stack([batch.modalities[name].present for name in self.modality_names])
        weights = present.T.to(torch.float32) + 1e-12
        chosen = torch.multinomial(weights, 1).squeeze(1)
        single = torch.nn.functional.one_hot(chosen, present.shape[0]).T.bool() & present
        dropped = torch.rand(batch.size, device=present.device) < self.config.modality_dropout
        return torch.where(dropped, single, present)

    def generative(self, z: torch.Tensor, batch: Minibatch) -> dict[str, CountDistribution]:
        """Each modality's distribution given ``z`` of shape ``(batch, n_latent)``."""
        return {
            name: self.decoders[name](
                z,
                log_library=batch.modalities[name].log_library,
                batch_index=batch.batch_index,
                categorical=batch.categorical,
                continuous=batch.continuous,
            )
            for name in self.modality_names
        }

    def reconstruction(self, z: torch.Tensor, batch: Minibatch) -> dict[str, torch.Tensor]:
        """``log p(x_m | z)`` per modality and cell (zero where absent), each ``(batch,)``."""
        out = {}
        for name, distribution in self.generative(z, batch).items():
            modality = batch.modalities[name]
            log_lik = distribution.log_prob_rows(modality.counts)
            out[name] = torch.where(modality.present, log_lik, torch.zeros_like(log_lik))
        return out

    def forward(self, batch: Minibatch) -> LossTerms:
        """One-sample ELBO terms of a training minibatch (what DistributedDataParallel calls)."""
        return self.loss_terms(batch)

    def loss_terms(
        self,
        batch: Minibatch,
        posterior: Posterior | None = None,
        generator: torch.Generator | None = None,
    ) -> LossTerms:
        """One-sample ELBO terms per cell (``posterior`` defaults to the encoders')."""
        if posterior is None:
            posterior = self.posterior(batch, expert_mask=self._dropped_expert_mask(batch))
        z = posterior.rsample(generator)
        return LossTerms(self.reconstruction(z, batch), gaussian_kl(posterior))
