"""Likelihoods against scipy oracles, and the sparse per-cell sums against the dense formulas."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st
import torch

from scamort.data.sparse_batch import SparseBatch
from scamort.distributions import (
    Bernoulli,
    NegativeBinomial,
    Poisson,
    SoftmaxNegativeBinomial,
    ZeroInflatedNegativeBinomial,
)
from scamort.nb_rows import negative_binomial_rows, softmax_negative_binomial_rows

# (mu, theta) pairs spanning tiny to huge means and dispersions.
NB_CASES = [(0.01, 0.05), (0.5, 1.0), (3.0, 10.0), (50.0, 0.3), (1e4, 1e3), (2.0, 1e5)]
COUNTS = np.array([0, 1, 2, 5, 17, 120, 3000], dtype=np.float64)


@pytest.mark.parametrize(("mu", "theta"), NB_CASES)
def test_negative_binomial_matches_scipy(mu: float, theta: float) -> None:
    dist = NegativeBinomial(
        torch.full((len(COUNTS),), np.log(mu), dtype=torch.float64),
        torch.full((len(COUNTS),), np.log(theta), dtype=torch.float64),
    )
    ours = dist.log_prob(torch.tensor(COUNTS)).numpy()
    oracle = st.nbinom.logpmf(COUNTS, theta, theta / (theta + mu))
    np.testing.assert_allclose(ours, oracle, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("mu", "theta"), NB_CASES[:4])
@pytest.mark.parametrize("pi", [0.0, 0.3, 0.9])
def test_zero_inflated_negative_binomial_matches_mixture(mu: float, theta: float, pi: float) -> None:
    logit = np.log(pi / (1 - pi)) if pi > 0 else -50.0
    n = len(COUNTS)
    dist = ZeroInflatedNegativeBinomial(
        torch.full((n,), np.log(mu), dtype=torch.float64),
        torch.full((n,), np.log(theta), dtype=torch.float64),
        torch.full((n,), logit, dtype=torch.float64),
    )
    log_nb = st.nbinom.logpmf(COUNTS, theta, theta / (theta + mu))
    pi = 1 / (1 + np.exp(-logit))
    oracle = np.where(COUNTS == 0, np.logaddexp(np.log(pi), np.log1p(-pi) + log_nb), np.log1p(-pi) + log_nb)
    np.testing.assert_allclose(dist.log_prob(torch.tensor(COUNTS)).numpy(), oracle, rtol=1e-8)


@pytest.mark.parametrize("rate", [1e-3, 0.7, 12.0, 5e3])
def test_poisson_matches_scipy(rate: float) -> None:
    dist = Poisson(torch.full((len(COUNTS),), np.log(rate), dtype=torch.float64))
    oracle = st.poisson.logpmf(COUNTS, rate)
    np.testing.assert_allclose(dist.log_prob(torch.tensor(COUNTS)).numpy(), oracle, rtol=1e-9)


@pytest.mark.parametrize("p", [0.01, 0.4, 0.97])
def test_bernoulli_matches_scipy(p: float) -> None:
    x = np.array([0.0, 1.0, 1.0, 0.0])
    dist = Bernoulli(torch.full((4,), np.log(p / (1 - p)), dtype=torch.float64))
    np.testing.assert_allclose(dist.log_prob(torch.tensor(x)).numpy(), st.bernoulli.logpmf(x, p), rtol=1e-9)


def _random_case(per_cell_theta: bool, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    log_mu = torch.randn(6, 9, generator=generator, dtype=torch.float64) + 1.0
    shape = (6, 9) if per_cell_theta else (9,)
    log_theta = torch.randn(*shape, generator=generator, dtype=torch.float64)
    counts = torch.poisson(log_mu.exp(), generator=generator)
    counts[0] = 0  # an all-zero row
    logits = torch.randn(6, 9, generator=generator, dtype=torch.float64)
    return log_mu, log_theta, counts, logits


@pytest.mark.parametrize("per_cell_theta", [False, True])
def test_sparse_row_sums_equal_dense_sums(per_cell_theta: bool) -> None:
    log_mu, log_theta, counts, logits = _random_case(per_cell_theta)
    batch = SparseBatch.from_dense(counts)
    binary = (counts > 0).double()
    cases = [
        (NegativeBinomial(log_mu, log_theta), counts, batch),
        (ZeroInflatedNegativeBinomial(log_mu, log_theta, logits), counts, batch),
        (Poisson(log_mu), counts, batch),
        (Bernoulli(logits), binary, SparseBatch.from_dense(binary)),
    ]
    for dist, dense, sparse in cases:
        expected = dist.log_prob(dense).sum(-1)
        torch.testing.assert_close(dist.log_prob_rows(sparse), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("per_cell_theta", [False, True])
def test_negative_binomial_rows_gradients(per_cell_theta: bool) -> None:
    log_mu, log_theta, counts, _ = _random_case(per_cell_theta, seed=1)
    batch = SparseBatch.from_dense(counts)
    log_mu.requires_grad_(True)
    log_theta.requires_grad_(True)

    def fast(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return negative_binomial_rows(a, b, batch.row, batch.col, batch.values)

    assert torch.autograd.gradcheck(fast, (log_mu, log_theta))
    dense = NegativeBinomial(log_mu, log_theta).log_prob(counts).sum()
    dense_grads = torch.autograd.grad(dense, (log_mu, log_theta))
    fast_grads = torch.autograd.grad(fast(log_mu, log_theta).sum(), (log_mu, log_theta))
    for ours, reference in zip(fast_grads, dense_grads, strict=True):
        torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize("per_cell_theta", [False, True])
def test_softmax_negative_binomial_equals_the_dense_formula(per_cell_theta: bool) -> None:
    """The fused softmax + NB kernel: same values and gradients as autograd on the dense formula."""
    _, log_theta, counts, logits = _random_case(per_cell_theta, seed=2)
    logits = 4 * logits  # a wide range of proportions, some tiny
    log_library = torch.log(counts.sum(1).clamp(min=1)) + 0.5
    batch = SparseBatch.from_dense(counts)
    inputs = (logits.requires_grad_(), log_library.requires_grad_(), log_theta.requires_grad_())

    def fused(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return softmax_negative_binomial_rows(a, b, c, batch.row, batch.col, batch.values)

    def dense(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        log_mu = torch.log_softmax(a, -1) + b.unsqueeze(-1)
        return NegativeBinomial(log_mu, c).log_prob(counts).sum(-1) + torch.lgamma(counts + 1).sum(-1)

    assert torch.autograd.gradcheck(fused, inputs)
    torch.testing.assert_close(fused(*inputs), dense(*inputs), rtol=1e-10, atol=1e-10)
    weights = torch.rand(counts.shape[0], dtype=torch.float64)
    ours = torch.autograd.grad((fused(*inputs) * weights).sum(), inputs)
    reference = torch.autograd.grad((dense(*inputs) * weights).sum(), inputs)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b)
    distribution = SoftmaxNegativeBinomial(logits, log_library, log_theta)
    torch.testing.assert_close(distribution.log_prob_rows(batch), distribution.log_prob(counts).sum(-1))
    torch.testing.assert_close(distribution.mean.sum(-1), log_library.exp())


def test_softmax_negative_binomial_is_finite_for_extreme_logits() -> None:
    """A gene whose softmax share underflows in float32 but has a count: finite, matching float64."""
    logits = torch.tensor([[0.0, -120.0, 5.0]])
    counts = torch.tensor([[3.0, 1.0, 0.0]])
    batch = SparseBatch.from_dense(counts)
    log_library, log_theta = torch.tensor([2.0]), torch.zeros(3)
    value = SoftmaxNegativeBinomial(logits, log_library, log_theta).log_prob_rows(batch)
    as_double = SoftmaxNegativeBinomial(logits.double(), log_library.double(), log_theta.double())
    assert torch.isfinite(value).all()
    torch.testing.assert_close(value.double(), as_double.log_prob_rows(_double(batch)), rtol=1e-5, atol=1e-3)


def _double(batch: SparseBatch) -> SparseBatch:
    return SparseBatch.from_dense(batch.to_dense().double())


def test_samples_have_the_right_moments() -> None:
    torch.manual_seed(0)
    n = 200_000
    log_mu = torch.full((n,), np.log(4.0))
    log_theta = torch.full((n,), np.log(2.0))
    nb = NegativeBinomial(log_mu, log_theta).sample()
    assert abs(nb.mean().item() - 4.0) < 0.05
    assert abs(nb.var().item() - (4.0 + 16.0 / 2.0)) < 0.3
    zinb = ZeroInflatedNegativeBinomial(log_mu, log_theta, torch.zeros(n)).sample()
    assert abs(zinb.mean().item() - 2.0) < 0.05
    assert abs((zinb == 0).float().mean().item() - (0.5 + 0.5 * (2 / 6) ** 2)) < 0.01
