"""scamort.Model end to end: it learns, its queries have the right shapes, it saves and loads exactly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from sklearn.metrics import adjusted_rand_score

import scamort
from scamort import InputError
from tests.conftest import make_counts


@pytest.fixture(scope="module")
def trained() -> scamort.Model:
    adata = make_counts(n_cells=400, seed=1)
    model = scamort.Model(adata, batch_key="batch", n_latent=5)
    model.train(max_epochs=40, progress_bar=False)
    return model


def test_history_records_every_epoch_and_warmup_reaches_one(trained) -> None:
    history = trained.history
    assert list(history["epoch"]) == list(range(1, len(history) + 1))
    assert history["kl_weight"].iloc[-1] == 1.0
    assert history["kl_weight"].is_monotonic_increasing
    assert np.isfinite(history[["train_elbo", "validation_elbo"]].to_numpy()).all()
    np.testing.assert_allclose(
        history["train_elbo"], history["train_reconstruction"] - history["train_kl"], rtol=1e-5
    )


def test_model_learns_held_out_elbo_and_cell_types() -> None:
    adata = make_counts(n_cells=600, seed=2)
    train, held_out = adata[:500].copy(), adata[500:].copy()
    model = scamort.Model(train, batch_key="batch", n_latent=5)
    before = model.get_elbo(held_out)
    model.train(max_epochs=60, progress_bar=False)
    after = model.get_elbo(held_out)
    assert after > before + 0.25 * abs(before), (before, after)
    latent = model.get_latent_representation(held_out)
    predicted = _nearest_centroid(model.get_latent_representation(), train.obs["cell_type"], latent)
    assert (predicted == held_out.obs["cell_type"].to_numpy()).mean() > 0.9


def _nearest_centroid(reference: np.ndarray, labels: pd.Series, query: np.ndarray) -> np.ndarray:
    names = np.array(sorted(labels.unique()))
    centroids = np.stack([reference[labels.to_numpy() == n].mean(0) for n in names])
    return names[((query[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)]


@pytest.mark.parametrize("likelihood", ["zinb", "poisson"])
def test_other_likelihoods_train(likelihood: str) -> None:
    adata = make_counts(n_cells=200)
    model = scamort.Model(adata, likelihood=likelihood, dispersion="gene-batch", batch_key="batch")
    history = model.train(max_epochs=15, progress_bar=False)
    assert history["validation_elbo"].iloc[-1] > history["validation_elbo"].iloc[0]


def test_queries_have_documented_shapes(trained) -> None:
    n, g = trained.adata.shape
    assert trained.get_latent_representation().shape == (n, 5)
    assert trained.get_latent_representation(indices=[3, 1]).shape == (2, 5)
    sample = trained.get_latent_representation(give_mean=False)
    assert not np.allclose(sample, trained.get_latent_representation())
    expression = trained.get_normalized_expression(library_size=1e4)
    assert isinstance(expression, pd.DataFrame) and expression.shape == (n, g)
    np.testing.assert_allclose(expression.sum(1), 1e4, rtol=1e-4)
    assert list(expression.index) == list(trained.adata.obs_names)
    corrected = trained.get_normalized_expression(transform_batch="b0")
    assert not np.allclose(corrected.to_numpy(), expression.to_numpy())
    per_cell = trained.get_elbo(return_mean=False)
    assert per_cell.shape == (n,) and (per_cell < 0).all()
    reconstruction = trained.get_reconstruction_error(return_mean=False)
    assert set(reconstruction) == {"rna"} and reconstruction["rna"].shape == (n,)
    draws = trained.posterior_predictive_sample(indices=np.arange(10), n_samples=3)
    assert draws.shape == (3, 10, g) and (draws >= 0).all()
    with pytest.raises(InputError, match="transform_batch='b9' is not a batch"):
        trained.get_normalized_expression(transform_batch="b9")


def test_marginal_ll_is_above_the_elbo_and_bounded_in_memory(trained) -> None:
    cells = np.arange(30)
    elbo = trained.get_elbo(indices=cells, return_mean=False)
    marginal = trained.get_marginal_ll(indices=cells, n_mc_samples=200, return_mean=False)
    assert marginal.shape == (30,)
    assert marginal.mean() > elbo.mean()
    # chunking over samples does not change the estimate's scale
    small = trained.get_marginal_ll(indices=cells, n_mc_samples=50)
    assert abs(small - marginal.mean()) < 0.05 * abs(marginal.mean())


def test_query_cells_in_any_order_give_the_same_latent(trained) -> None:
    adata = trained.adata
    order = np.random.default_rng(0).permutation(adata.n_obs)[:50]
    query = adata[order].copy()
    query = query[:, np.random.default_rng(1).permutation(query.n_vars)].copy()
    np.testing.assert_allclose(
        trained.get_latent_representation(query),
        trained.get_latent_representation(indices=order),
        rtol=1e-5,
        atol=1e-6,
    )


def test_save_load_round_trip_is_exact(trained, tmp_path) -> None:
    trained.save(tmp_path / "model")
    spec = json.loads((tmp_path / "model" / "model.json").read_text())
    assert spec["scamort_version"] == scamort.__version__ and spec["format_version"] == 2
    loaded = scamort.Model.load(tmp_path / "model", trained.adata)
    np.testing.assert_array_equal(loaded.get_latent_representation(), trained.get_latent_representation())
    pd.testing.assert_frame_equal(loaded.history, trained.history)
    np.testing.assert_array_equal(loaded.train_indices, trained.train_indices)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trained.save(tmp_path / "model")
    trained.save(tmp_path / "model", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_load_refuses_mismatched_data_and_formats(trained, tmp_path) -> None:
    trained.save(tmp_path / "model")
    with pytest.raises(InputError, match="lacks 3 of the model's 60 features"):
        scamort.Model.load(tmp_path / "model", trained.adata[:, 3:].copy())
    renamed = trained.adata.copy()
    renamed.obs["batch"] = renamed.obs["batch"].cat.rename_categories({"b1": "b2"})
    with pytest.raises(InputError, match="categories the model was not trained on"):
        scamort.Model.load(tmp_path / "model", renamed)
    spec_path = tmp_path / "model" / "model.json"
    spec = json.loads(spec_path.read_text())
    spec["format_version"] = 99
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(InputError, match=r"uses save format 99.*upgrade scamort"):
        scamort.Model.load(tmp_path / "model", trained.adata)
    with pytest.raises(FileNotFoundError, match="not a saved scamort model"):
        scamort.Model.load(tmp_path, trained.adata)


def test_same_seed_gives_identical_latents() -> None:
    latents = []
    for _ in range(2):
        model = scamort.Model(make_counts(n_cells=150), seed=7)
        model.train(max_epochs=5, progress_bar=False)
        latents.append(model.get_latent_representation())
    np.testing.assert_array_equal(latents[0], latents[1])


def test_repr_summarises_data_and_state(trained) -> None:
    text = repr(trained)
    assert "400 cells" in text and "rna: 60 features, nb" in text and "trained" in text


def test_worm_latent_recovers_neuron_classes(worm_hvg) -> None:
    """On real data, Leiden clusters of the latent agree with the known neuron classes."""
    adata = worm_hvg.copy()
    model = scamort.Model(adata)
    history = model.train(max_epochs=40, progress_bar=False)
    assert history["validation_elbo"].iloc[-1] > history["validation_elbo"].iloc[0] + 30
    adata.obsm["X_scamort"] = model.get_latent_representation()
    sc.pp.neighbors(adata, use_rep="X_scamort", random_state=0)
    sc.tl.leiden(adata, resolution=1.0, random_state=0, flavor="igraph", n_iterations=2)
    ari = adjusted_rand_score(adata.obs["label"], adata.obs["leiden"])
    assert ari > 0.3, ari
