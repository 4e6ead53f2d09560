"""Tests for scamort.refine and scamort.amortization_gap: per-cell refinement and the gap."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import scamort
from scamort import inference
from scamort.amortization_gap import (
    AmortizationGap,
    GapOptions,
    measure_amortization_gap,
    plot_amortization_gap,
)
from scamort.data import CellData, encode_cells
from scamort.refine import (
    EVALUATION_STREAM,
    TRAINING_STREAM,
    RefineOptions,
    elbo_with_fixed_noise,
    fixed_normal_noise,
    maybe_refine,
    refine_posteriors,
)
from tests.conftest import make_counts

N_LATENT = 4
INDEX = np.arange(0, 240, 2)  # 120 of the 240 cells, to show ``index`` is honoured


@pytest.fixture(scope="module")
def trained() -> tuple[scamort.Model, CellData]:
    """A small model trained briefly on synthetic counts, and the cells as tensors."""
    adata = make_counts()
    model = scamort.Model(adata, n_latent=N_LATENT, n_hidden=32, seed=0)
    model.train(max_epochs=20, progress_bar=False)
    return model, encode_cells(adata, model.registry).to(model.device)


def test_noise_is_standard_normal_and_keyed_by_cell() -> None:
    ids = torch.arange(4000)
    noise = fixed_normal_noise(ids, 4, 8, seed=3, stream=TRAINING_STREAM).double()
    assert noise.shape == (4, 4000, 8)
    assert abs(noise.mean().item()) < 0.02
    assert abs(noise.std().item() - 1) < 0.02
    assert abs(np.corrcoef(noise[0, :, 0], noise[0, :, 1])[0, 1]) < 0.05
    # a cell's draws do not depend on the other cells or on n_samples
    alone = fixed_normal_noise(torch.tensor([123]), 2, 8, seed=3, stream=TRAINING_STREAM)
    torch.testing.assert_close(alone[:, 0].double(), noise[:2, 123])
    other = fixed_normal_noise(ids, 4, 8, seed=3, stream=EVALUATION_STREAM).double()
    assert abs(np.corrcoef(noise.flatten(), other.flatten())[0, 1]) < 0.02


def test_refinement_raises_the_expected_elbo(trained: tuple[scamort.Model, CellData]) -> None:
    model, data = trained
    encoder = elbo_with_fixed_noise(model.module, data, INDEX, n_samples=64)
    result = refine_posteriors(model.module, data, INDEX, n_steps=20)
    refined = elbo_with_fixed_noise(model.module, data, INDEX, result.posteriors, n_samples=64)
    assert result.mean.shape == result.log_variance.shape == (len(INDEX), N_LATENT)
    assert refined.mean() > encoder.mean()


def test_fixed_noise_refinement_never_lowers_its_objective(
    trained: tuple[scamort.Model, CellData],
) -> None:
    model, data = trained
    kwargs = {"n_samples": 4, "seed": 5, "stream": TRAINING_STREAM}
    encoder = elbo_with_fixed_noise(model.module, data, INDEX, **kwargs)
    result = refine_posteriors(model.module, data, INDEX, n_steps=15, noise="fixed", n_samples=4, seed=5)
    refined = elbo_with_fixed_noise(model.module, data, INDEX, result.posteriors, **kwargs)
    assert np.all(refined >= encoder - 1e-3)
    assert refined.mean() > encoder.mean()


def test_weights_flags_and_mode_are_untouched(trained: tuple[scamort.Model, CellData]) -> None:
    model, data = trained
    module = model.module
    before = {name: value.clone() for name, value in module.state_dict().items()}
    grads_before = [None if p.grad is None else p.grad.clone() for p in module.parameters()]
    first = next(module.parameters())
    first.requires_grad_(False)  # a flag that differs from the others must come back as it was
    module.train()
    try:
        refine_posteriors(module, data, INDEX, n_steps=5)
        assert module.training
        assert not first.requires_grad
        assert all(p.requires_grad for p in list(module.parameters())[1:])
        for parameter, grad in zip(module.parameters(), grads_before, strict=True):
            assert (parameter.grad is None) == (grad is None)
            assert grad is None or torch.equal(parameter.grad, grad)
        for name, value in module.state_dict().items():
            assert torch.equal(value, before[name]), name
    finally:
        first.requires_grad_(True)
        module.eval()


def test_batched_refinement_equals_one_cell_at_a_time(
    trained: tuple[scamort.Model, CellData],
) -> None:
    model, data = trained
    cells = INDEX[:6]
    batched = refine_posteriors(model.module, data, cells, n_steps=8, batch_size=512)
    for position, cell in enumerate(cells):
        alone = refine_posteriors(model.module, data, np.array([cell]), n_steps=8)
        np.testing.assert_allclose(alone.mean[0], batched.mean[position], atol=1e-4)
        np.testing.assert_allclose(alone.log_variance[0], batched.log_variance[position], atol=1e-4)


def test_recorded_steps_match_shorter_runs(trained: tuple[scamort.Model, CellData]) -> None:
    model, data = trained
    long = refine_posteriors(model.module, data, INDEX, n_steps=8, record_elbo_at=(8, 0, 3))
    assert long.recorded_steps == (0, 3, 8)
    assert long.elbo is not None and long.elbo.shape == (len(INDEX), 3)
    short = refine_posteriors(model.module, data, INDEX, n_steps=3)
    np.testing.assert_allclose(
        elbo_with_fixed_noise(model.module, data, INDEX, short.posteriors), long.elbo[:, 1], atol=1e-4
    )
    np.testing.assert_allclose(elbo_with_fixed_noise(model.module, data, INDEX), long.elbo[:, 0], atol=1e-4)


def test_refined_q_is_a_better_importance_proposal(
    trained: tuple[scamort.Model, CellData],
) -> None:
    model, data = trained
    cells = INDEX[:60]
    torch.manual_seed(1)
    encoder = inference.marginal_log_likelihood(model.module, data, cells, n_mc_samples=100)
    refined_q = refine_posteriors(model.module, data, cells, n_steps=20).posteriors
    torch.manual_seed(1)
    refined = inference.marginal_log_likelihood(
        model.module, data, cells, n_mc_samples=100, posteriors=refined_q
    )
    assert refined.mean() >= encoder.mean() - 0.05


def test_maybe_refine_and_option_checks(trained: tuple[scamort.Model, CellData]) -> None:
    model, data = trained
    assert maybe_refine(model.module, data, INDEX, 0) is None
    mean, log_variance = maybe_refine(model.module, data, INDEX[:5], 2)
    assert mean.shape == log_variance.shape == (5, N_LATENT)
    with pytest.raises(ValueError, match="refine_steps"):
        maybe_refine(model.module, data, INDEX, -1)
    with pytest.raises(ValueError, match="noise"):
        RefineOptions(noise="fresh")
    with pytest.raises(ValueError, match="record_elbo_at"):
        RefineOptions(n_steps=3, record_elbo_at=(5,))
    with pytest.raises(ValueError, match="lr"):
        RefineOptions(lr=0.0)


def test_amortization_gap_and_plot(trained: tuple[scamort.Model, CellData]) -> None:
    model, data = trained
    options = GapOptions(steps=(2, 6), n_optimum_steps=40, optimum_n_samples=4, n_eval_samples=8)
    gap = measure_amortization_gap(model.module, data, INDEX[:40], options)
    assert gap.steps == (0, 2, 6)
    assert gap.elbo.shape == (40, 3)
    np.testing.assert_allclose(gap.improvement[:, 0], 0.0)
    assert gap.gap.mean() > 0
    assert gap.closure[0] == 0 and gap.closure[-1] > 0
    frame = gap.to_frame(index=[f"c{i}" for i in range(40)])
    assert list(frame.columns) == [
        "encoder_elbo",
        "refined_elbo_2",
        "refined_elbo_6",
        "optimum_elbo",
        "amortization_gap",
    ]
    summary = gap.summary()
    assert summary["steps"] == [0, 2, 6] and len(summary["closure"]) == 3
    fig = plot_amortization_gap({"a": gap, "b": gap})
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert isinstance(plot_amortization_gap(gap), Figure)
    with pytest.raises(ValueError, match="n_optimum_steps"):
        GapOptions(steps=(50,), n_optimum_steps=10)
    assert isinstance(gap, AmortizationGap)
