"""Count distributions: negative binomial, zero-inflated NB, NB mixture, Poisson and Bernoulli.

Each is a ``torch.distributions.Distribution`` with the usual dense ``log_prob`` (checked against scipy
oracles in the tests) and a fast ``log_prob_rows`` that returns the per-cell sum over features while
evaluating the count-dependent terms only on the nonzero entries. That is exact: for the Poisson family
every term that involves the count ``x`` vanishes at ``x = 0``, so only the ``x = 0`` log-probability is
needed densely. On sparse single-cell data this halves the cost of a training step.

Large counts: the count-dependent terms (``lgamma(x + theta)``, ``lgamma(x + 1)``, ``x log(...)``) are of
order ``x log x`` and cancel to a log-probability of order ``log x``, so they are evaluated in float64
(from the float32 parameters) at every nonzero count, and the per-cell sums are formed in float64
before they are returned in the parameters' dtype. This keeps the per-cell log-likelihoods correct to
float32 precision for every count scamort accepts, up to :data:`scamort.data.validation.MAX_COUNT`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, constraints

from scamort.data.sparse_batch import SparseBatch
from scamort.nb_rows import (
    negative_binomial_nonzero_log_prob,
    negative_binomial_rows,
    softmax_negative_binomial_rows,
)

#: What ``Distribution.sample`` accepts as ``sample_shape``.
_Shape = torch.Size | list[int] | tuple[int, ...]

__all__ = [
    "Bernoulli",
    "CountDistribution",
    "NegativeBinomial",
    "NegativeBinomialMixture",
    "Poisson",
    "SoftmaxNegativeBinomial",
    "ZeroInflatedNegativeBinomial",
    "binarised_poisson_logits",
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
    support: constraints.Constraint = constraints.nonnegative_integer
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
        self._log_mu = log_mu
        self.log_theta = log_theta
        super().__init__(log_mu.shape)

    @property
    def log_mu(self) -> torch.Tensor:
        """Log mean, shape ``(n_cells, n_features)``."""
        return self._log_mu

    @property
    def mean(self) -> torch.Tensor:
        return self.log_mu.exp()

    @property
    def variance(self) -> torch.Tensor:
        mu = self.mean
        return mu + mu.square() / self.log_theta.exp()

    def _log_theta_plus_mu(self) -> torch.Tensor:
        return torch.logaddexp(self.log_theta, self.log_mu)

    def log_prob_at_zero(self) -> torch.Tensor:
        """``log p(0) = -theta log1p(mu / theta)``, shape ``(n_cells, n_features)``."""
        return _negative_binomial_log_zero(self.log_mu, self.log_theta)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # float64 inside: the count-dependent terms cancel (see the module docstring)
        log_mu, log_theta = torch.broadcast_tensors(self.log_mu.double(), self.log_theta.double())
        log_p = negative_binomial_nonzero_log_prob(value.double().expand_as(log_mu), log_mu, log_theta)
        return (log_p - torch.lgamma(value.double() + 1)).to(self.log_mu.dtype)

    def nonzero_log_prob(self, counts: SparseBatch) -> torch.Tensor:
        """``log p(x) + lgamma(x + 1)`` at the nonzero entries, float64, shape ``(nnz,)``."""
        return negative_binomial_nonzero_log_prob(
            counts.values, _at_nonzeros(self.log_mu, counts), _at_nonzeros(self.log_theta, counts)
        )

    def log_prob_rows(self, counts: SparseBatch) -> torch.Tensor:
        log_lik = negative_binomial_rows(self.log_mu, self.log_theta, counts.row, counts.col, counts.values)
        return (log_lik - counts.log_factorial).to(self.log_mu.dtype)

    def sample(self, sample_shape: _Shape = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            theta = self.log_theta.exp().expand(self.batch_shape)
            mu = self.log_mu.exp().expand(self.batch_shape)
            rate = torch.distributions.Gamma(theta, theta / mu).sample(torch.Size(sample_shape))
            return torch.poisson(rate)


class SoftmaxNegativeBinomial(NegativeBinomial):
    """:class:`NegativeBinomial` with mean ``library × softmax(logits)``, as decoders produce it.

    The same distribution, parameterised so that :meth:`log_prob_rows` can fold the softmax into the
    likelihood (:func:`~scamort.nb_rows.softmax_negative_binomial_rows`): ``log mu`` is formed only at
    the nonzero counts. ``log_mu`` is computed on first use for everything else.

    Parameters
    ----------
    logits
        Decoder outputs, shape ``(n_cells, n_features)``.
    log_library
        Log library size per cell, shape ``(n_cells,)``.
    log_theta
        Log inverse dispersion, shape ``(n_features,)`` or ``(n_cells, n_features)``.
    """

    def __init__(self, logits: torch.Tensor, log_library: torch.Tensor, log_theta: torch.Tensor) -> None:
        self.logits = logits
        self.log_library = log_library
        self.log_theta = log_theta
        CountDistribution.__init__(self, logits.shape)

    @property
    def log_mu(self) -> torch.Tensor:
        """Log mean, shape ``(n_cells, n_features)``."""
        return F.log_softmax(self.logits, dim=-1) + self.log_library.unsqueeze(-1)

    def log_prob_rows(self, counts: SparseBatch) -> torch.Tensor:
        log_lik = softmax_negative_binomial_rows(
            self.logits, self.log_library, self.log_theta, counts.row, counts.col, counts.values
        )
        return (log_lik - counts.log_factorial).to(self.logits.dtype)


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
        log_zero = self._log_zero(_negative_binomial_log_zero(self.log_mu, self.log_theta))
        # log p(x) at a nonzero: the float64 NB term less log(1 + e^l); its log p(0) leaves the sum
        nonzero = (
            self.nonzero_log_prob(counts)
            - _at_nonzeros(F.softplus(self.zi_logits), counts).double()
            - _at_nonzeros(log_zero, counts).double()
        )
        rows = log_zero.sum(-1, dtype=torch.float64) + _row_sum_of_nonzeros(nonzero, counts)
        return (rows - counts.log_factorial).to(self.log_mu.dtype)

    def sample(self, sample_shape: _Shape = torch.Size()) -> torch.Tensor:
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
        x, log_mu = value.double(), self.log_mu.double()
        return (x * log_mu - log_mu.exp() - torch.lgamma(x + 1)).to(self.log_mu.dtype)

    def log_prob_rows(self, counts: SparseBatch) -> torch.Tensor:
        rate = self.log_mu.exp()
        # at a nonzero x log mu - mu cancels: both terms in float64 there, the float32 rate replaced
        log_mu_nz = _at_nonzeros(self.log_mu, counts).double()
        nonzero = counts.values.double() * log_mu_nz - log_mu_nz.exp() + _at_nonzeros(rate, counts).double()
        rows = _row_sum_of_nonzeros(nonzero, counts) - rate.sum(-1, dtype=torch.float64)
        return (rows - counts.log_factorial).to(self.log_mu.dtype)

    def sample(self, sample_shape: _Shape = torch.Size()) -> torch.Tensor:
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

    def sample(self, sample_shape: _Shape = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return torch.bernoulli(self.mean.expand(torch.Size(sample_shape) + self.batch_shape))


def _negative_binomial_kernel(
    value: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor, log_theta_mu: torch.Tensor
) -> torch.Tensor:
    """The part of ``log NB(x; mu, theta)`` that depends on ``mu``:
    ``theta (log theta - log(theta + mu)) + x (log mu - log(theta + mu))``."""
    return _negative_binomial_log_zero(log_mu, log_theta) + value * (log_mu - log_theta_mu)


def _negative_binomial_log_zero(log_mu: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """``log NB(0; mu, theta) = theta (log theta - log(theta + mu)) = -theta log1p(mu / theta)``, in the
    second form: the first cancels in float32 when ``theta >> mu`` (0.4 nats at ``theta = 1e6``)."""
    return -log_theta.exp() * F.softplus(log_mu - log_theta)


def _count_constant(value: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """The part of ``log NB(x; mu, theta)`` free of ``mu``:
    ``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)``."""
    theta = log_theta.exp()
    return torch.lgamma(value + theta) - torch.lgamma(theta) - torch.lgamma(value + 1)


class NegativeBinomialMixture(CountDistribution):
    """Two negative binomials, background and foreground, sharing an inverse dispersion.

    The protein likelihood of totalVI (simplified): each count is background (probability
    ``sigmoid(mixture_logits)``) with mean ``mu_background`` or foreground with mean ``mu_foreground``
    (the decoders keep ``mu_foreground >= mu_background``). Both components depend on the count, so the
    per-cell sums evaluate ``log p(0)`` densely and ``log p(x) - log p(0)`` at the nonzeros.

    Parameters
    ----------
    log_mu_background, log_mu_foreground
        Log means of the two components, shape ``(n_cells, n_features)``.
    log_theta
        Log inverse dispersion, shape ``(n_features,)`` or ``(n_cells, n_features)``.
    mixture_logits
        Logits of the probability that a count is background, shape ``(n_cells, n_features)``.
    """

    def __init__(
        self,
        log_mu_background: torch.Tensor,
        log_mu_foreground: torch.Tensor,
        log_theta: torch.Tensor,
        mixture_logits: torch.Tensor,
    ) -> None:
        self.log_mu_background = log_mu_background
        self.log_mu_foreground = log_mu_foreground
        self.log_theta = log_theta
        self.mixture_logits = mixture_logits
        super().__init__(log_mu_background.shape)

    @property
    def background_probability(self) -> torch.Tensor:
        """Probability that a count is background, ``(n_cells, n_features)``."""
        return torch.sigmoid(self.mixture_logits)

    @property
    def mean(self) -> torch.Tensor:
        pi = self.background_probability
        return pi * self.log_mu_background.exp() + (1 - pi) * self.log_mu_foreground.exp()

    @property
    def foreground_mean(self) -> torch.Tensor:
        """Expected counts without the background: ``(1 - pi) mu_foreground``, ``(n_cells, n_features)``."""
        return (1 - self.background_probability) * self.log_mu_foreground.exp()

    @property
    def variance(self) -> torch.Tensor:
        pi = self.background_probability
        theta = self.log_theta.exp()
        second_moment = torch.zeros_like(pi)
        for weight, log_mu in ((pi, self.log_mu_background), (1 - pi, self.log_mu_foreground)):
            mu = log_mu.exp()
            second_moment = second_moment + weight * (mu + mu.square() / theta + mu.square())
        return second_moment - self.mean.square()

    def _mixture_kernel(
        self,
        value: torch.Tensor,
        log_mu_background: torch.Tensor,
        log_mu_foreground: torch.Tensor,
        log_theta: torch.Tensor,
        logits: torch.Tensor,
    ) -> torch.Tensor:
        """``log p(x)`` without ``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)`` (shared by both
        components), elementwise over broadcastable arguments."""
        background = -F.softplus(-logits) + _negative_binomial_kernel(
            value, log_mu_background, log_theta, torch.logaddexp(log_theta, log_mu_background)
        )
        foreground = -F.softplus(logits) + _negative_binomial_kernel(
            value, log_mu_foreground, log_theta, torch.logaddexp(log_theta, log_mu_foreground)
        )
        return torch.logaddexp(background, foreground)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        kernel = self._mixture_kernel(
            value, self.log_mu_background, self.log_mu_foreground, self.log_theta, self.mixture_logits
        )
        return kernel + _count_constant(value, self.log_theta)

    def log_prob_rows(self, counts: SparseBatch) -> torch.Tensor:
        zero = self._mixture_kernel(
            torch.zeros((), dtype=self.log_mu_background.dtype, device=self.log_mu_background.device),
            self.log_mu_background,
            self.log_mu_foreground,
            self.log_theta,
            self.mixture_logits,
        )
        x = counts.values
        log_theta = _at_nonzeros(self.log_theta, counts)
        at_x = self._mixture_kernel(  # float64 at the nonzeros, where its terms cancel
            x.double(),
            _at_nonzeros(self.log_mu_background, counts).double(),
            _at_nonzeros(self.log_mu_foreground, counts).double(),
            log_theta.double(),
            _at_nonzeros(self.mixture_logits, counts).double(),
        )
        theta = log_theta.double().exp()
        nonzero = (
            at_x
            - _at_nonzeros(zero, counts).double()
            + torch.lgamma(x.double() + theta)
            - torch.lgamma(theta)
        )
        rows = zero.sum(-1, dtype=torch.float64) + _row_sum_of_nonzeros(nonzero, counts)
        return (rows - counts.log_factorial).to(self.log_mu_background.dtype)

    def sample(self, sample_shape: _Shape = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.batch_shape
            background = torch.bernoulli(self.background_probability.expand(shape)).bool()
            log_mu = torch.where(
                background, self.log_mu_background.expand(shape), self.log_mu_foreground.expand(shape)
            )
            theta = self.log_theta.exp().expand(shape)
            return torch.poisson(torch.distributions.Gamma(theta, theta / log_mu.exp()).sample())


def binarised_poisson_logits(log_rate: torch.Tensor) -> torch.Tensor:
    """Bernoulli logits of ``P(x > 0) = 1 - exp(-rate)`` for a Poisson rate ``exp(log_rate)``.

    ``logit = log(expm1(rate))``, computed stably: ``log_rate + rate / 2`` for tiny rates (its series),
    ``rate + log(-expm1(-rate))`` otherwise (``= rate`` to float precision for large rates).

    Parameters
    ----------
    log_rate
        Log of the Poisson rate, any shape.
    """
    small = log_rate < -8.0
    rate = log_rate.clamp(min=-8.0).exp()
    large = rate + torch.log(-torch.expm1(-rate.clamp(max=30.0)))
    return torch.where(small, log_rate + 0.5 * log_rate.clamp(max=-8.0).exp(), large)
