"""The learning-rate rules of ``Model.train(lr_scaling=...)``: what reaches the optimizer."""

from __future__ import annotations

import pytest

import scamort
import scamort.model_training as model_module
from scamort.errors import InputError


def _trained_lr(adata, monkeypatch: pytest.MonkeyPatch, **train_options) -> float:
    """Train one epoch and return the learning rate the training loop was given."""
    seen = {}
    real_fit = model_module.fit

    def recording_fit(module, data, config, **kwargs):
        seen["lr"] = config.lr
        return real_fit(module, data, config, **kwargs)

    monkeypatch.setattr(model_module, "fit", recording_fit)
    scamort.Model(adata).train(max_epochs=1, progress_bar=False, **train_options)
    return seen["lr"]


@pytest.mark.parametrize(
    ("rule", "batch_size", "expected"),
    [
        ("sqrt", 128, 1e-3),
        ("sqrt", 512, 2e-3),
        ("linear", 512, 4e-3),
        ("linear", 64, 5e-4),
        ("none", 512, 1e-3),
    ],
)
def test_lr_follows_the_batch_size_by_the_chosen_rule(
    counts_adata, monkeypatch: pytest.MonkeyPatch, rule: str, batch_size: int, expected: float
) -> None:
    lr = _trained_lr(counts_adata, monkeypatch, lr=1e-3, batch_size=batch_size, lr_scaling=rule)
    assert lr == pytest.approx(expected)


def test_lr_scales_by_the_global_batch_under_torchrun(counts_adata, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun every process takes ``batch_size`` cells, so the rule sees ``WORLD_SIZE`` times it."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    seen = {}

    def recording_fit(module, data, config, **kwargs):
        seen["lr"] = config.lr
        raise RuntimeError("stop before joining a process group")

    monkeypatch.setattr(model_module, "fit", recording_fit)
    with pytest.raises(RuntimeError, match="stop before"):
        scamort.Model(counts_adata).train(max_epochs=1, batch_size=128, lr=1e-3, lr_scaling="linear")
    assert seen["lr"] == pytest.approx(4e-3)


def test_unknown_rule_is_refused_before_training(counts_adata) -> None:
    with pytest.raises(InputError, match="lr_scaling='cubic' is not supported; choose one of sqrt, linear"):
        scamort.Model(counts_adata).train(max_epochs=1, lr_scaling="cubic")
