"""The training defaults: KL warm-up length and AdamW's eps."""

from __future__ import annotations

import pytest
import torch

import scamort
import scamort.model_training as model_module
import scamort.train.loop as loop_module
from scamort.errors import InputError
from scamort.train import TrainConfig, default_kl_warmup_epochs
from scamort.train.config import DEFAULT_ADAM_EPS


@pytest.mark.parametrize(("max_epochs", "expected"), [(1, 1), (3, 1), (40, 10), (100, 25), (400, 100)])
def test_warmup_is_a_quarter_of_the_run(max_epochs: int, expected: int) -> None:
    assert default_kl_warmup_epochs(max_epochs) == expected


def test_model_train_passes_the_default_warmup_and_eps(counts_adata, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    real_fit = model_module.fit

    def recording_fit(module, data, config, **kwargs):
        seen["config"] = config
        return real_fit(module, data, config, **kwargs)

    monkeypatch.setattr(model_module, "fit", recording_fit)
    created = []
    real_adamw = torch.optim.AdamW

    def recording_adamw(params, **options):
        created.append(options)
        return real_adamw(params, **options)

    monkeypatch.setattr(loop_module.torch.optim, "AdamW", recording_adamw)
    history = scamort.Model(counts_adata).train(max_epochs=8, progress_bar=False)
    assert seen["config"].kl_warmup_epochs == 2
    assert created[0]["eps"] == DEFAULT_ADAM_EPS
    # linear per-step warm-up: weight 1 from the end of epoch 2 on
    assert history["kl_weight"].iloc[0] < 1 and (history["kl_weight"].iloc[2:] == 1).all()


@pytest.mark.parametrize("eps", [0, -1e-3, float("nan")])
def test_non_positive_adam_eps_is_refused(eps: float) -> None:
    with pytest.raises(InputError, match="adam_eps must be"):
        TrainConfig(max_epochs=1, adam_eps=eps)
