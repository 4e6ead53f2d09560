"""Training on one modality first (``Model.train(pretrain_modality=...)``): what each stage trains,
which cells it uses, the history it records, checkpoints and the errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import scamort
from scamort import InputError
from scamort.train import TrainConfig, fit, split_cells
from scamort.train.freeze import frozen
from tests.test_multimodal import copy_weights, make_cite, split_mudata, thirds

SMALL = {"batch_key": "batch", "n_latent": 4, "n_hidden": 32, "seed": 0}
MODALITIES = {"rna": scamort.Modality(), "prot": scamort.Modality()}
CONFIG = TrainConfig(max_epochs=3, batch_size=32, kl_warmup_epochs=1, seed=0)


def unpaired_model(**options) -> scamort.Model:
    adata = make_cite(n_cells=90, seed=4)
    return scamort.Model(split_mudata(adata, thirds(adata.n_obs)), modalities=MODALITIES, **SMALL, **options)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def assert_same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_restricted_data_marks_other_modalities_unmeasured() -> None:
    model = unpaired_model()
    data = model._data
    restricted = data.restricted_to(("rna",))
    assert torch.equal(restricted.modalities["rna"].present, data.modalities["rna"].present)
    assert not restricted.modalities["prot"].present.any()
    assert data.modalities["prot"].present.any()  # the original is untouched
    assert restricted.modalities["prot"].values is data.modalities["prot"].values


def test_restricted_loss_is_that_of_a_model_of_the_one_modality() -> None:
    model = unpaired_model()
    rna_cells = scamort.Model(
        split_mudata(make_cite(n_cells=90, seed=4), thirds(90)).mod["rna"],
        **SMALL,
    )
    copy_weights(model, rna_cells)
    model.module.eval()
    rna_cells.module.eval()
    measured = torch.as_tensor(np.flatnonzero(model._data.modalities["rna"].present.numpy()))
    joint = model.module.loss_terms(
        model._data.restricted_to(("rna",)).minibatch(measured), generator=torch.Generator().manual_seed(1)
    )
    alone = rna_cells.module.loss_terms(
        rna_cells._data.minibatch(torch.arange(rna_cells._data.n_cells)),
        generator=torch.Generator().manual_seed(1),
    )
    # the MuData's RNA AnnData holds the RNA cells in the MuData's order
    torch.testing.assert_close(joint.total_reconstruction, alone.total_reconstruction)
    torch.testing.assert_close(joint.kl, alone.kl)


def test_fit_on_one_modality_leaves_the_others_weights_and_skips_cells_lacking_it() -> None:
    model = unpaired_model()
    before = weights(model.module)
    result = fit(
        model.module, model._data, CONFIG, device=torch.device("cpu"), progress_bar=False, modalities=("rna",)
    )
    after = weights(model.module)
    for key in before:
        if key.startswith(("encoders.prot.", "decoders.prot.")):
            assert torch.equal(before[key], after[key]), key
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoders.rna."))
    has_rna = model._data.modalities["rna"].present.numpy()
    train, validation = split_cells(model._data.n_cells, CONFIG.train_size, CONFIG.seed)
    np.testing.assert_array_equal(result.train_indices, train[has_rna[train]])
    np.testing.assert_array_equal(result.validation_indices, validation[has_rna[validation]])
    assert len(result.train_indices) < len(train)


def test_train_with_pretraining_keeps_the_pretrained_encoder_and_records_both_stages() -> None:
    model = unpaired_model()
    history = model.train(max_epochs=3, batch_size=32, progress_bar=False, pretrain_modality="rna")
    reference = unpaired_model()  # the same start; its first stage alone
    fit(
        reference.module,
        reference._data,
        replace_warmup(3),
        device=torch.device("cpu"),
        progress_bar=False,
        modalities=("rna",),
    )
    assert_same(weights(model.module.encoders["rna"]), weights(reference.module.encoders["rna"]))
    assert not all(
        torch.equal(a, b)
        for a, b in zip(
            model.module.encoders["prot"].state_dict().values(),
            reference.module.encoders["prot"].state_dict().values(),
            strict=True,
        )
    )
    assert all(p.requires_grad for p in model.module.parameters())
    assert list(history["stage"]) == ["pretrain"] * 3 + ["all"] * 3
    assert list(history["epoch"]) == list(range(1, 7))
    assert history["kl_weight"].iloc[0] < 1 and (history["kl_weight"].iloc[3:] == 1).all()
    assert history is model.history and np.isfinite(history["validation_elbo"]).all()
    assert model.is_trained


def replace_warmup(max_epochs: int) -> TrainConfig:
    """The config ``Model.train(max_epochs=..., batch_size=32)`` derives (warm-up a quarter)."""
    return TrainConfig(
        max_epochs=max_epochs,
        batch_size=32,
        kl_warmup_epochs=max(1, max_epochs // 4),
        seed=0,
        lr=1e-3 * 32 / 128,
    )


def test_pretraining_resumes_from_its_checkpoints(tmp_path: Path) -> None:
    options = {"max_epochs": 3, "batch_size": 32, "progress_bar": False, "pretrain_modality": "rna"}
    first = unpaired_model()
    history = first.train(checkpoint_dir=tmp_path, **options)
    assert (tmp_path / "pretrain" / "checkpoint.pt").is_file() and (tmp_path / "checkpoint.pt").is_file()
    again = unpaired_model()
    resumed = again.train(checkpoint_dir=tmp_path, **options)
    np.testing.assert_array_equal(resumed.drop(columns="seconds"), history.drop(columns="seconds"))
    assert_same(weights(again.module), weights(first.module))


def test_frozen_restores_requires_grad() -> None:
    layer = torch.nn.Linear(2, 2)
    layer.bias.requires_grad_(False)
    with frozen(layer):
        assert not any(p.requires_grad for p in layer.parameters())
    assert layer.weight.requires_grad and not layer.bias.requires_grad


def test_pretrain_modality_errors_before_training() -> None:
    model = unpaired_model()
    with pytest.raises(InputError, match=r"pretrain_modality=.atac. is not supported"):
        model.train(max_epochs=1, progress_bar=False, pretrain_modality="atac")
    single = scamort.Model(make_cite(n_cells=60), **SMALL)
    with pytest.raises(InputError, match="needs a model of several modalities"):
        single.train(max_epochs=1, progress_bar=False, pretrain_modality="rna")
    assert model.history is None and single.history is None


def test_a_pretrained_model_saves_and_loads_with_its_stages(tmp_path: Path) -> None:
    model = unpaired_model()
    model.train(max_epochs=2, batch_size=32, progress_bar=False, pretrain_modality="rna")
    model.save(tmp_path / "model")
    loaded = scamort.Model.load(tmp_path / "model", model.adata)
    assert list(loaded.history["stage"]) == ["pretrain"] * 2 + ["all"] * 2
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation())


def test_a_foreign_checkpoint_is_refused_before_the_first_stage(tmp_path: Path) -> None:
    options = {"max_epochs": 2, "batch_size": 32, "progress_bar": False}
    unpaired_model().train(checkpoint_dir=tmp_path, **options)  # a run without pretraining
    model = unpaired_model()
    before = weights(model.module)
    with pytest.raises(InputError, match="other training options"):
        model.train(checkpoint_dir=tmp_path, pretrain_modality="rna", **options)
    assert not (tmp_path / "pretrain").exists()
    assert_same(weights(model.module), before)
    assert model.history is None


def test_a_time_budget_applies_to_each_stage_and_each_resumes(tmp_path: Path) -> None:
    options = {"max_epochs": 3, "batch_size": 32, "progress_bar": False, "pretrain_modality": "rna"}
    first = unpaired_model()
    history = first.train(checkpoint_dir=tmp_path, max_seconds=1e-9, **options)
    assert list(history["stage"]) == ["pretrain", "all"]  # one epoch per stage
    # the same call again resumes each stage from its checkpoint for one more epoch
    again = unpaired_model().train(checkpoint_dir=tmp_path, max_seconds=1e-9, **options)
    assert list(again["stage"]) == ["pretrain"] * 2 + ["all"] * 2
    kept = again.drop(columns=["seconds", "epoch"]).iloc[[0]].to_numpy()
    np.testing.assert_array_equal(kept, history.drop(columns=["seconds", "epoch"]).iloc[[0]].to_numpy())
