"""The product of Gaussian experts against its closed form."""

from __future__ import annotations

import numpy as np
import torch

from scamort.nn import product_of_experts


def _closed_form(mean: np.ndarray, var: np.ndarray, mask: np.ndarray):
    precision = 1 + (mask[..., None] / var).sum(0)
    joint_mean = (mask[..., None] * mean / var).sum(0) / precision
    return joint_mean, 1 / precision


def test_matches_closed_form_with_prior_expert() -> None:
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 5, 4))
    var = rng.lognormal(size=(3, 5, 4))
    mask = rng.integers(0, 2, size=(3, 5)).astype(float)
    joint_mean, joint_log_var = product_of_experts(
        torch.tensor(mean), torch.tensor(np.log(var)), torch.tensor(mask)
    )
    expected_mean, expected_var = _closed_form(mean, var, mask)
    np.testing.assert_allclose(joint_mean.numpy(), expected_mean, rtol=1e-12)
    np.testing.assert_allclose(np.exp(joint_log_var.numpy()), expected_var, rtol=1e-12)


def test_single_expert_is_shrunk_towards_the_prior() -> None:
    mean = torch.tensor([[[2.0, -1.0]]], dtype=torch.float64)
    log_var = torch.log(torch.tensor([[[1.0, 0.25]]], dtype=torch.float64))
    joint_mean, joint_log_var = product_of_experts(mean, log_var, torch.ones(1, 1))
    # precision 1 + 1/var: (2, 5); mean = mean / var / precision
    torch.testing.assert_close(joint_mean, torch.tensor([[1.0, -0.8]], dtype=torch.float64))
    torch.testing.assert_close(joint_log_var.exp(), torch.tensor([[0.5, 0.2]], dtype=torch.float64))


def test_masked_experts_do_not_matter_and_no_expert_gives_the_prior() -> None:
    mean = torch.randn(2, 3, 4)
    log_var = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, False, False], [True, True, False]])
    changed_mean = mean.clone()
    changed_mean[0, 1:] = 1e3  # expert 0 is masked for cells 1 and 2
    changed_log_var = log_var.clone()
    changed_log_var[0, 1:] = -20.0
    a = product_of_experts(mean, log_var, mask)
    b = product_of_experts(changed_mean, changed_log_var, mask)
    torch.testing.assert_close(a[0][1:], b[0][1:])
    torch.testing.assert_close(a[1][1:], b[1][1:])
    torch.testing.assert_close(a[0][2], torch.zeros(4))
    torch.testing.assert_close(a[1][2], torch.zeros(4))


def test_extreme_log_variances_stay_finite() -> None:
    mean = torch.randn(2, 4, 3)
    log_var = torch.tensor([-200.0, 200.0]).view(2, 1, 1).expand(2, 4, 3)
    joint_mean, joint_log_var = product_of_experts(mean, log_var, torch.ones(2, 4))
    assert torch.isfinite(joint_mean).all() and torch.isfinite(joint_log_var).all()
    torch.testing.assert_close(joint_mean, mean[0], rtol=1e-4, atol=1e-4)
