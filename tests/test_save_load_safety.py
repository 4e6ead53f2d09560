"""Saving never destroys what it should not, loading refuses damaged folders in one sentence, and the
model's query arguments are checked before any work."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

import scamort
from scamort import InputError, io
from scamort.export import embed
from tests.conftest import make_counts


@pytest.fixture(scope="module")
def trained() -> scamort.Model:
    model = scamort.Model(make_counts(n_cells=120, n_genes=20, seed=4), batch_key="batch", n_latent=3)
    model.train(max_epochs=3, progress_bar=False)
    return model


# ----------------------------------------------------------------------------- saving
def test_overwrite_refuses_a_folder_that_is_not_a_saved_model(trained, tmp_path) -> None:
    folder = tmp_path / "analysis"
    folder.mkdir()
    (folder / "cells.h5ad").write_text("precious")
    with pytest.raises(FileExistsError, match=r"not a saved scamort model .*choose another path"):
        trained.save(folder, overwrite=True)
    assert (folder / "cells.h5ad").read_text() == "precious"
    afile = tmp_path / "notes.txt"
    afile.write_text("keep")
    with pytest.raises(FileExistsError, match="is a file, not a model folder"):
        trained.save(afile, overwrite=True)
    assert afile.read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    trained.save(empty, overwrite=True)  # an empty folder may be filled
    assert sorted(p.name for p in empty.iterdir()) == ["model.json", "weights.pt"]


def test_an_interrupted_overwrite_keeps_the_previous_model(trained, tmp_path, monkeypatch) -> None:
    target = tmp_path / "model"
    trained.save(target)
    before = (target / "weights.pt").read_bytes()
    real_replace = os.replace
    calls = []

    def interrupted_second_rename(source, destination):
        calls.append(source)
        if len(calls) == 2:  # staging -> target, after the old model was moved aside
            raise KeyboardInterrupt
        real_replace(source, destination)

    monkeypatch.setattr(io.os, "replace", interrupted_second_rename)
    with pytest.raises(KeyboardInterrupt):
        trained.save(target, overwrite=True)
    monkeypatch.undo()
    assert (target / "weights.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    scamort.Model.load(target, trained.adata)


def test_a_saved_folder_has_the_permissions_of_any_new_folder(trained, tmp_path) -> None:
    previous = os.umask(0o022)
    try:
        trained.save(tmp_path / "model")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755


def test_numpy_integers_in_the_constructor_can_be_saved(tmp_path) -> None:
    model = scamort.Model(make_counts(n_cells=60, n_genes=12), n_latent=np.int64(4), n_hidden=np.int32(16))
    model.save(tmp_path / "model")
    loaded = scamort.Model.load(tmp_path / "model", model.adata)
    assert loaded.init_params["n_latent"] == 4 and type(loaded.init_params["n_latent"]) is int


def test_a_negative_seed_is_refused_before_any_work() -> None:
    with pytest.raises(InputError, match=r"seed must be an integer >= 0, got -5"):
        scamort.Model(make_counts(n_cells=30, n_genes=8), seed=-5)


# ----------------------------------------------------------------------------- loading
def test_damaged_or_foreign_weights_are_refused_in_one_sentence(trained, tmp_path) -> None:
    target = tmp_path / "model"
    trained.save(target)
    weights = target / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(InputError, match=r"weights\.pt cannot be read .*save the model again"):
        scamort.Model.load(target, trained.adata)
    other = scamort.Model(trained.adata, batch_key="batch", n_latent=5)
    other.save(tmp_path / "other")
    os.replace(tmp_path / "other" / "weights.pt", weights)
    with pytest.raises(InputError, match=r"do not fit the model its model\.json describes"):
        scamort.Model.load(target, trained.adata)
    (target / "weights.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"not a complete saved scamort model \(no weights\.pt"):
        scamort.Model.load(target, trained.adata)


@pytest.mark.parametrize("thing", ["cells.h5ad", None])
def test_load_needs_data_objects_not_paths(trained, tmp_path, thing) -> None:
    trained.save(tmp_path / "model")
    with pytest.raises(InputError, match=r"Model\.load attaches the model to an AnnData or MuData"):
        scamort.Model.load(tmp_path / "model", thing)
    with pytest.raises(InputError, match="Unknown device 'gpu'"):
        scamort.Model.load(tmp_path / "model", trained.adata, device="gpu")


# ----------------------------------------------------------------------------- queries
@pytest.mark.parametrize(
    ("indices", "message"),
    [
        (np.ones(50, dtype=bool), r"mask needs one entry per cell \(120\); got shape \(50,\)"),
        ([0.5, 1.9], r"integer positions or a boolean mask; got float64"),
        ([-1000, 5], r"indices must lie in \[-120, 120\); got -1000"),
        ([3, 120], r"got 120"),
        ([], r"indices selects no cells"),
    ],
)
def test_bad_indices_are_refused(trained, indices, message) -> None:
    with pytest.raises(InputError, match=message):
        trained.get_latent_representation(indices=indices)


def test_indices_select_the_cells_they_name(trained) -> None:
    full = trained.get_latent_representation()
    mask = np.zeros(trained.adata.n_obs, dtype=bool)
    mask[[4, 7]] = True
    np.testing.assert_array_equal(trained.get_latent_representation(indices=mask), full[[4, 7]])
    np.testing.assert_array_equal(trained.get_latent_representation(indices=[-1, 0]), full[[-1, 0]])


@pytest.mark.parametrize("key", ["", "X/scamort", 3])
def test_keys_an_h5ad_cannot_store_are_refused(trained, key) -> None:
    adata = trained.adata.copy()
    with pytest.raises(InputError, match="key_added must be a non-empty string without '/'"):
        embed(adata, trained, key_added=key)
    assert "X/scamort" not in adata.obsm and "" not in adata.obsm


def test_float64_posteriors_decode_like_float32(trained) -> None:
    from scamort import inference

    data, index = trained._data, np.arange(10)
    mean, log_variance = inference.latent(trained.module, data, index)
    as32 = inference.normalized_expression(
        trained.module, data, index, modality="rna", posteriors=(mean, log_variance)
    )
    as64 = inference.normalized_expression(
        trained.module, data, index, modality="rna", posteriors=(mean.astype(np.float64), log_variance)
    )
    np.testing.assert_array_equal(as32, as64)
    with pytest.raises(InputError, match="one row per cell"):
        inference.normalized_expression(
            trained.module, data, index, modality="rna", posteriors=(mean[:5], log_variance[:5])
        )


def test_embedding_params_do_not_share_lists_with_the_model(trained) -> None:
    adata = trained.adata.copy()
    embed(adata, trained)
    adata.uns["X_scamort"]["params"]["init_params"]["categorical_covariate_keys"].append("donor")
    assert trained.init_params["categorical_covariate_keys"] == []


def test_negative_binomial_at_large_inverse_dispersion_matches_scipy() -> None:
    from scipy import stats

    from scamort.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial

    mu = torch.tensor([[100.0, 0.5, 3.0]])
    theta = torch.tensor([1e6, 1e5, 1e4])
    zeros = torch.zeros(1, 3)
    theta64, mu64 = theta.double().numpy(), mu.double().numpy()
    reference = stats.nbinom.logpmf(0, theta64, theta64 / (theta64 + mu64))
    nb = NegativeBinomial(mu.log(), theta.log())
    np.testing.assert_allclose(nb.log_prob(zeros).numpy(), reference, atol=1e-4)
    np.testing.assert_allclose(nb.log_prob_at_zero().numpy(), reference, atol=1e-4)
    no_inflation = ZeroInflatedNegativeBinomial(mu.log(), theta.log(), torch.full((1, 3), -300.0))
    np.testing.assert_allclose(no_inflation.log_prob(zeros).numpy(), reference, atol=1e-4)
