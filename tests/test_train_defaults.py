"""The training defaults: KL warm-up length and AdamW's eps per parameter group."""

from __future__ import annotations

import pytest
import torch

import scamort
import scamort.model_training as model_module
import scamort.train.loop as loop_module
from scamort.errors import InputError
from scamort.train import TrainConfig, default_kl_warmup_epochs
from scamort.train.config import DEFAULT_ADAM_EPS, DEFAULT_DECODER_ADAM_EPS
from scamort.train.optimizer import parameter_groups


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
        created.append({**options, "groups": params})
        return real_adamw(params, **options)

    monkeypatch.setattr(loop_module.torch.optim, "AdamW", recording_adamw)
    history = scamort.Model(counts_adata).train(max_epochs=8, progress_bar=False)
    assert seen["config"].kl_warmup_epochs == 2
    groups = {group["name"]: group for group in created[0]["groups"]}
    assert groups["decoder_heads"]["eps"] == DEFAULT_DECODER_ADAM_EPS == 0.1
    assert groups["other"]["eps"] == DEFAULT_ADAM_EPS == 1e-8
    # linear per-step warm-up: weight 1 from the end of epoch 2 on
    assert history["kl_weight"].iloc[0] < 1 and (history["kl_weight"].iloc[2:] == 1).all()


@pytest.mark.parametrize("eps", [0, -1e-3, float("nan")])
@pytest.mark.parametrize("name", ["adam_eps", "decoder_adam_eps"])
def test_non_positive_adam_eps_is_refused(name: str, eps: float) -> None:
    with pytest.raises(InputError, match=f"^{name} must be"):
        TrainConfig(max_epochs=1, **{name: eps})


def test_only_the_count_decoders_output_layers_get_the_decoder_eps(counts_adata) -> None:
    """Every parameter is in exactly one group; the RNA (nb) decoder's output layer is in the
    damped group, and the protein (nbmixture) decoder, the hidden layers, dispersions, encoders and
    library heads are in the other."""
    adata = counts_adata.copy()
    adata.obsm["protein"] = adata.X[:, :5].toarray() if hasattr(adata.X, "toarray") else adata.X[:, :5].copy()
    model = scamort.Model(
        adata,
        modalities={
            "rna": scamort.Modality(),
            "prot": scamort.Modality(obsm_key="protein", likelihood="nbmixture"),
        },
    )
    config = TrainConfig(max_epochs=1, adam_eps=1e-7, decoder_adam_eps=0.05)
    groups = {group["name"]: group for group in parameter_groups(model.module, config)}
    assert (groups["decoder_heads"]["eps"], groups["other"]["eps"]) == (0.05, 1e-7)
    names = {id(p): n for n, p in model.module.named_parameters()}
    damped = {names[id(p)] for p in groups["decoder_heads"]["params"]}
    other = {names[id(p)] for p in groups["other"]["params"]}
    assert damped | other == set(names.values()) and not damped & other
    assert len(groups["decoder_heads"]["params"]) + len(groups["other"]["params"]) == len(names)
    assert damped == {"decoders.rna.head.weight", "decoders.rna.head.bias"}
    assert {"decoders.prot.head.weight", "decoders.rna.log_theta"} <= other
    assert any(n.startswith("decoders.rna.body.") for n in other)
    assert any(n.startswith("encoders.prot") for n in other)
    assert any(n.startswith("library_heads.") for n in other)


def test_equal_eps_is_plain_one_group_adamw_and_the_decoder_eps_matters(
    counts_adata, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the decoders' eps equal to the others', training is bitwise that of one-group AdamW; a
    different decoder eps changes the trained weights."""

    def trained(**options: float) -> dict[str, torch.Tensor]:
        model = scamort.Model(counts_adata, seed=0)
        config = TrainConfig(max_epochs=2, seed=0, **options)
        loop_module.fit(model.module, model._data, config, device=torch.device("cpu"))
        return {k: v.detach().clone() for k, v in model.module.state_dict().items()}

    grouped = trained(adam_eps=1e-6, decoder_adam_eps=1e-6)
    damped = trained(adam_eps=1e-6, decoder_adam_eps=0.1)

    def one_group(module, config):
        return torch.optim.AdamW(
            [p for p in module.parameters() if p.requires_grad],
            lr=config.lr,
            weight_decay=config.weight_decay,
            eps=config.adam_eps,
            fused=True,
        )

    monkeypatch.setattr(loop_module, "build_optimizer", one_group)
    plain = trained(adam_eps=1e-6, decoder_adam_eps=1e-6)
    assert all(torch.equal(grouped[k], plain[k]) for k in plain)
    assert not torch.equal(grouped["decoders.rna.head.weight"], damped["decoders.rna.head.weight"])
