"""A modality's decoder: latent z (+ covariates, library size) -> a count distribution."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from scamort.distributions import (
    Bernoulli,
    CountDistribution,
    NegativeBinomialMixture,
    Poisson,
    SoftmaxNegativeBinomial,
    ZeroInflatedNegativeBinomial,
    binarised_poisson_logits,
)
from scamort.nn.mlp import CovariateMLP


class DecoderShape(Protocol):
    """What :func:`build_decoder` reads of a configuration (``scamort.module.ModuleConfig`` has it)."""

    @property
    def dispersion(self) -> str: ...
    @property
    def n_batch(self) -> int: ...
    @property
    def n_hidden(self) -> int: ...
    @property
    def n_layers(self) -> int: ...
    @property
    def categorical_sizes(self) -> tuple[int, ...]: ...
    @property
    def n_continuous(self) -> int: ...


__all__ = [
    "CountDecoder",
    "DISPERSIONS",
    "DepthBernoulliDecoder",
    "DecoderShape",
    "NegativeBinomialMixtureDecoder",
    "build_decoder",
]

#: How the negative binomial's inverse dispersion is shared.
DISPERSIONS = ("gene", "gene-batch")


def _log_theta_parameter(dispersion: str, n_batch: int, n_output: int) -> nn.Parameter:
    """Log inverse dispersions, zeros: one row, or one row per batch for ``"gene-batch"``."""
    return nn.Parameter(torch.zeros(n_batch if dispersion == "gene-batch" else 1, n_output))


def _select_log_theta(log_theta: torch.Tensor, dispersion: str, batch_index: torch.Tensor) -> torch.Tensor:
    """``(n_output,)``, or per cell ``(batch, n_output)`` for ``"gene-batch"``, from
    :func:`_log_theta_parameter`'s rows."""
    return log_theta[batch_index] if dispersion == "gene-batch" else log_theta[0]


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
        self.dispersion = dispersion
        self.log_theta = (
            _log_theta_parameter(dispersion, n_batch, n_output) if likelihood in ("nb", "zinb") else None
        )

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
        if self.likelihood == "nb":
            return SoftmaxNegativeBinomial(logits, log_library, self._log_theta(batch_index))
        log_mu = F.log_softmax(logits, dim=-1) + log_library.unsqueeze(-1)
        if self.likelihood == "poisson":
            return Poisson(log_mu)
        assert self.zero_inflation_head is not None, "a zinb decoder has a zero-inflation head"
        return ZeroInflatedNegativeBinomial(log_mu, self._log_theta(batch_index), self.zero_inflation_head(h))

    def _log_theta(self, batch_index: torch.Tensor) -> torch.Tensor:
        """Log inverse dispersion, ``(n_output,)`` or per cell ``(batch, n_output)`` for gene-batch."""
        assert self.log_theta is not None, "only nb and zinb decoders have a dispersion"
        return _select_log_theta(self.log_theta, self.dispersion, batch_index)

    def proportions(
        self,
        z: torch.Tensor,
        *,
        categorical: torch.Tensor,
        continuous: torch.Tensor,
        include_background: bool = True,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        """Expected proportions (rows sum to 1; probabilities for Bernoulli), ``(batch, n_output)``;
        ``include_background`` is for mixture decoders (these have no background)."""
        h = self.body(z, categorical, continuous)
        logits = self.head(h)
        if self.likelihood == "bernoulli":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=-1)


class NegativeBinomialMixtureDecoder(nn.Module):
    """Decode z into a background/foreground negative-binomial mixture (``likelihood="nbmixture"``).

    A simplified form of totalVI's protein likelihood. Per cell n and feature p:

    - background mean ``library_n × exp(b[batch_n, p])``, a learned background rate per feature (and
      batch: ambient antibody differs between runs);
    - foreground mean ``background × exp(softplus(h_np))``, so the foreground is never below it;
    - probability of background ``sigmoid(g_np)``;
    - one inverse dispersion per feature (or feature and batch), shared by both components.

    ``h`` and ``g`` are two heads on the same MLP of ``z`` and covariates. ``scamort.Model`` starts
    ``b`` from the data (:meth:`initialize_background`). Parameters as for :class:`CountDecoder`
    (``likelihood`` is implied).
    """

    likelihood = "nbmixture"

    def __init__(
        self,
        n_latent: int,
        n_output: int,
        *,
        dispersion: str,
        n_batch: int,
        n_hidden: int,
        n_layers: int,
        categorical_sizes: Sequence[int],
        n_continuous: int,
    ) -> None:
        super().__init__()
        self.body = CovariateMLP(n_latent, n_hidden, n_layers, 0.0, categorical_sizes, n_continuous)
        self.head = nn.Linear(n_hidden, n_output)
        self.mixture_head = nn.Linear(n_hidden, n_output)
        # Means summing to about the library at the start: (1/2 + 1/2 (1 + softplus(0))) / n ≈ 1.35 / n.
        self.log_background = nn.Parameter(torch.full((n_batch, n_output), -math.log(1.35 * n_output)))
        self.dispersion = dispersion
        self.log_theta = _log_theta_parameter(dispersion, n_batch, n_output)

    @torch.no_grad()
    def initialize_background(self, rates: torch.Tensor, batch_index: torch.Tensor) -> None:
        """Start the background rates at the data's: per batch and feature, the 10% quantile of the
        counts per unit library ``(x + 1/2) / library`` of measured cells.

        ``rates`` is ``(n_cells, n_output)``, ``batch_index`` ``(n_cells,)``. A single learned rate per
        feature moves slowly under Adam (about ``lr`` per step), so a data-driven start matters.
        """
        for batch in range(self.log_background.shape[0]):
            rows = rates[batch_index == batch]
            if rows.shape[0]:
                self.log_background[batch] = torch.quantile(rows.to(torch.float32), 0.1, dim=0).log()

    def _parts(
        self, z: torch.Tensor, batch_index: torch.Tensor, categorical: torch.Tensor, continuous: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log background rate, log foreground rate (per unit library) and mixture logits."""
        h = self.body(z, categorical, continuous)
        log_background = self.log_background[batch_index]
        log_foreground = log_background + F.softplus(self.head(h))
        return log_background, log_foreground, self.mixture_head(h)

    def forward(
        self,
        z: torch.Tensor,
        *,
        log_library: torch.Tensor,
        batch_index: torch.Tensor,
        categorical: torch.Tensor,
        continuous: torch.Tensor,
    ) -> NegativeBinomialMixture:
        """Distribution of the counts given ``z`` ``(batch, n_latent)``, as :class:`CountDecoder`'s."""
        log_background, log_foreground, logits = self._parts(z, batch_index, categorical, continuous)
        offset = log_library.unsqueeze(-1)
        log_theta = _select_log_theta(self.log_theta, self.dispersion, batch_index)
        return NegativeBinomialMixture(log_background + offset, log_foreground + offset, log_theta, logits)

    def proportions(
        self,
        z: torch.Tensor,
        *,
        categorical: torch.Tensor,
        continuous: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        include_background: bool = True,
    ) -> torch.Tensor:
        """Expected counts per unit library, ``(batch, n_output)``: the mixture's mean
        ``pi × background + (1 - pi) × foreground`` (rows sum to about 1), or with
        ``include_background=False`` the foreground part ``(1 - pi) × foreground`` only."""
        if batch_index is None:
            batch_index = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        log_background, log_foreground, logits = self._parts(z, batch_index, categorical, continuous)
        pi = torch.sigmoid(logits)
        foreground = (1 - pi) * log_foreground.exp()
        return foreground + pi * log_background.exp() if include_background else foreground


class DepthBernoulliDecoder(nn.Module):
    """Decode z into a depth-aware Bernoulli (``likelihood="bernoulli_depth"``) for binarised counts.

    ``P(x_np = 1) = 1 - exp(-library_n × rate_np)`` with ``rate_n = exp(s) × softmax(h_n)``: a
    binarised Poisson whose depth is the cell's number of nonzero features (its library after
    binarisation), so sequencing depth enters as it does for counts instead of through z. ``s`` is a
    learned global log-scale. Parameters as for :class:`CountDecoder` (``likelihood`` is implied;
    ``dispersion`` is unused).
    """

    likelihood = "bernoulli_depth"

    def __init__(
        self,
        n_latent: int,
        n_output: int,
        *,
        dispersion: str,
        n_batch: int,
        n_hidden: int,
        n_layers: int,
        categorical_sizes: Sequence[int],
        n_continuous: int,
    ) -> None:
        super().__init__()
        del dispersion, n_batch  # accepted for a uniform constructor
        self.body = CovariateMLP(n_latent, n_hidden, n_layers, 0.0, categorical_sizes, n_continuous)
        self.head = nn.Linear(n_hidden, n_output)
        self.log_scale = nn.Parameter(torch.zeros(()))

    def _log_rate(self, z: torch.Tensor, categorical: torch.Tensor, continuous: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.head(self.body(z, categorical, continuous)), dim=-1) + self.log_scale

    def forward(
        self,
        z: torch.Tensor,
        *,
        log_library: torch.Tensor,
        batch_index: torch.Tensor,
        categorical: torch.Tensor,
        continuous: torch.Tensor,
    ) -> Bernoulli:
        """Distribution of the 0/1 values given ``z`` of shape ``(batch, n_latent)``."""
        del batch_index
        log_rate = self._log_rate(z, categorical, continuous) + log_library.unsqueeze(-1)
        return Bernoulli(binarised_poisson_logits(log_rate))

    def proportions(
        self,
        z: torch.Tensor,
        *,
        categorical: torch.Tensor,
        continuous: torch.Tensor,
        include_background: bool = True,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        """Poisson rates per unit depth, ``(batch, n_output)``: ``P(x = 1) = 1 - exp(-depth × rate)``
        (``include_background`` is for mixture decoders)."""
        return self._log_rate(z, categorical, continuous).exp()


def build_decoder(config: DecoderShape, n_input: int, n_features: int, likelihood: str) -> nn.Module:
    """The decoder class of ``likelihood`` reading ``n_input`` latent dimensions, built with the
    config's shape and covariates."""
    options: dict[str, Any] = {
        "dispersion": config.dispersion,
        "n_batch": config.n_batch,
        "n_hidden": config.n_hidden,
        "n_layers": config.n_layers,
        "categorical_sizes": config.categorical_sizes,
        "n_continuous": config.n_continuous,
    }
    if likelihood == "nbmixture":
        return NegativeBinomialMixtureDecoder(n_input, n_features, **options)
    if likelihood == "bernoulli_depth":
        return DepthBernoulliDecoder(n_input, n_features, **options)
    return CountDecoder(n_input, n_features, likelihood=likelihood, **options)
