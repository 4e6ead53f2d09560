"""Count distributions: negative binomial, zero-inflated NB, Poisson and Bernoulli.

Each is a ``torch.distributions.Distribution`` with the usual dense ``log_prob`` (checked against scipy
oracles in the tests) and a fast ``log_prob_rows`` that returns the per-cell sum over features while
evaluating the count-dependent terms only on the nonzero entries. That is exact: for the Poisson family
every term that involves the count ``x`` vanishes at ``x = 0``, so only the ``x = 0`` log-probability is
needed densely. On sparse single-cell data this halves the cost of a training step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, constraints

from scamort.data.sparse_batch import SparseBatch
from scamort.nb_rows import negative_binomial_rows

__all__ = [
    "Bernoulli",
    "CountDistribution",
    "NegativeBinomial",
    "Poisson",
    "ZeroInflatedNegativeBinomial",
]


def _row_sum_of_nonzeros(values: torch.Tensor, counts: SparseBatch) -> torch.Tensor:
    """Sum per-entry terms of shape ``(nnz,)`` into their rows, shape ``(n_rows,)``."""
    out = torch.zeros(counts.n_rows, dtype=values.dtype, device=values.device)
    return out.index_add_(0, counts.row, values)


def _at_nonzeros(matrix: torch.Tensor, counts: SparseBatch) -> torch.Tensor:
    """Entries of ``matrix`` (shape ``(n_rows, n_features)`` or broadcastable ``(n_features,)``) at the
    nonzero coordinates of ``counts``, shape ``(nnz,)``."""
    if matrix.dim() == 1:
        return matrix[counts.col]
    return matrix.expand(counts.n_rows, -1).reshape(-1)[counts.flat_index]


class CountDistribution(Distribution):
    """Base class: a factorised distribution over a cells × features matrix.

    Subclasses implement ``log_prob`` (dense, elementwise), ``log_prob_rows`` (per-cell sums over
    features, sparse-aware), ``mean`` and ``sample``.
    """

    arg_constraints: dict = {}  # noqa: RUF012 - parameters are validated by the decoders that build them
    support = constraints.nonnegative_integer
    has_rsample = False

    def __init__(self, batch_shape: torch.Size) -> None:
        super().__init__(batch_shape=batch_shape, validate_args=False)

    def log_prob_rows(self, counts: SparseBatch) -> torch.Tensor:
        """Per-cell log-likelihood ``sum_g log p(x_ng)``, shape ``(n_rows,)``."""
        return self.log_prob(counts.to_dense()).sum(-1)


class NegativeBinomial(CountDistribution):
    """Negative binomial with mean ``mu`` and inverse dispersion ``theta`` (variance ``mu + mu²/theta``).

    Parameters
    ----------
    log_mu
        Log mean, shape ``(n_cells, n_features)``.
    log_theta
        Log inverse dispersion, shape ``(n_features,)`` or ``(n_cells, n_features)``.
    """

    def __init__(self, log_mu: torch.Tensor, log_theta: torch.Tensor) -> None:
        self.log_mu = log_mu
        self.log_theta = log_theta
        super().__init__(log_mu.shape)

    @property
    def mean(self) -> torch.Tensor:
        return self.log_mu.exp()

    @property
    def variance(self) -> torch.Tensor:
        mu = self.mean
        return mu + mu.square() / self.log_theta.exp()

    def _log_theta_plus_mu(self) -> torch.Tensor:
        return torch.log(self.log_theta.exp() + self.log_mu.exp())

    def log_prob_at_zero(self) -> torch.Tensor:
        """``log p(0) = theta (log theta - log(theta + mu))``, shape ``(n_cells, n_features)``."""
        theta = self.log_theta.exp()
        return theta * (self.log_theta - self._log_theta_plus_mu())

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        theta = self.log_theta.exp()
        log_theta_mu = self._log_theta_plus_mu()
        return (
            theta * (self.log_theta - log_theta_mu)
            + value * (self.log_mu - log_theta_mu)
            + torch.lgamma(value + theta)
            - torch.lgamma(theta)
            - torch.lgamma(value + 1)
        )

    def nonzero_terms(self, counts: SparseBatch, log_theta_mu: torch.Tensor) -> torch.Tensor:
        """``log p(x) - log p(0)`` at the nonzero entries (without ``lgamma(x+1)``), shape ``(nnz,)``."""
        x = counts.values
        log_theta = _at_nonzeros(self.log_theta, counts)
        theta = log_theta.exp()
        log_mu = _at_nonzeros(self.log_mu, counts)
        return (
            torch.lgamma(x + theta) - torch.lgamma(theta) + x * (log_mu - _at_nonzeros(log_theta_mu, counts))
        )

    def log_prob_rows(self, counts: SparseBatch) -> torch.Tensor:
        log_lik = negative_binomial_rows(self.log_mu, self.log_theta, counts.row, counts.col, counts.values)
        return log_lik - counts.log_factorial

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            theta = self.log_theta.exp().expand(self.batch_shape)
            mu = self.log_mu.exp().expand(self.batch_shape)
            rate = torch.distributions.Gamma(theta, theta / mu).sample(sample_shape)
            return torch.poisson(rate)


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    """Negative binomial mixed with a point mass at zero of probability ``sigmoid(zi_logits)``.

    Parameters
    ----------
    log_mu
        Log mean of the NB component, shape ``(n_cells, n_features)``.
    log_theta
        Log inverse dispersion, shape ``(n_features,)`` or ``(n_cells, n_features)``.
    zi_logits
        Logits of the zero-inflation probability, shape ``(n_cells, n_features)``.
    """

    def __init__(self, log_mu: torch.Tensor, log_theta: torch.Tensor, zi_logits: torch.Tensor) -> None:
        self.zi_logits = zi_logits
        super().__init__(log_mu, log_theta)

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(-self.zi_logits) * self.log_mu.exp()

    @property
    def variance(self) -> torch.Tensor:
        pi = torch.sigmoid(self.zi_logits)
        mu = self.log_mu.exp()
        nb_var = mu + mu.square() / self.log_theta.exp()
        return (1 - pi) * (nb_var + pi * mu.square())

    def _log_zero(self, nb_log_zero: torch.Tensor) -> torch.Tensor:
        # log(pi + (1 - pi) p_nb(0)) with pi = sigmoid(l): logaddexp(l, log p_nb(0)) - softplus(l)
        return torch.logaddexp(self.zi_logits, nb_log_zero) - F.softplus(self.zi_logits)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        nb = super().log_prob(value)
        log_zero = self._log_zero(super().log_prob_at_zero())
        return torch.where(value == 0, log_zero, nb - F.softplus(self.zi_logits))

    def log_prob_rows(self, counts: SparseBatch) -> torch.Tensor:
        log_theta_mu = self._log_theta_plus_mu()
        theta = self.log_theta.exp()
        nb_log_zero = theta * (self.log_theta - log_theta_mu)
        log_zero = self._log_zero(nb_log_zero)
        nonzero = (
            _at_nonzeros(nb_log_zero, counts)
            + self.nonzero_terms(counts, log_theta_mu)
            - _at_nonzeros(F.softplus(self.zi_logits), counts)
            - _at_nonzeros(log_zero, counts)
        )
        return log_zero.sum(-1) + _row_sum_of_nonzeros(nonzero, counts) - counts.log_factorial

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            counts = super().sample(sample_shape)
            zero = torch.bernoulli(torch.sigmoid(self.zi_logits).expand_as(counts))
            return counts * (1 - zero)


class Poisson(CountDistribution):
    """Poisson with log rate ``log_mu`` of shape ``(n_cells, n_features)``."""

    def __init__(self, log_mu: torch.Tensor) -> None:
        self.log_mu = log_mu
        super().__init__(log_mu.shape)

    @property
    def mean(self) -> torch.Tensor:
        return self.log_mu.exp()

    @property
    def variance(self) -> torch.Tensor:
        return self.mean

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return value * self.log_mu - self.log_mu.exp() - torch.lgamma(value + 1)

    def log_prob_rows(self, counts: SparseBatch) -> torch.Tensor:
        nonzero = counts.values * _at_nonzeros(self.log_mu, counts)
        return -self.log_mu.exp().sum(-1) + _row_sum_of_nonzeros(nonzero, counts) - counts.log_factorial

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return torch.poisson(self.mean.expand(torch.Size(sample_shape) + self.batch_shape))


class Bernoulli(CountDistribution):
    """Bernoulli with logits of shape ``(n_cells, n_features)``, for binarised accessibility."""

    support = constraints.boolean

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        super().__init__(logits.shape)

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def variance(self) -> torch.Tensor:
        p = self.mean
        return p * (1 - p)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return value * self.logits - F.softplus(self.logits)

    def log_prob_rows(self, counts: SparseBatch) -> torch.Tensor:
        nonzero = counts.values * _at_nonzeros(self.logits, counts)
        return -F.softplus(self.logits).sum(-1) + _row_sum_of_nonzeros(nonzero, counts)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return torch.bernoulli(self.mean.expand(torch.Size(sample_shape) + self.batch_shape))
