"""Tests for scamort.export / scamort.tl: embeddings into AnnData and out to files."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scamort
from scamort.export import embed, embedding_frame, write_embedding

N_LATENT = 4


def make_counts(n_cells: int = 120, n_genes: int = 40, seed: int = 0) -> ad.AnnData:
    """Poisson counts from two cell types over two batches, with string obs names."""
    rng = np.random.default_rng(seed)
    cell_type = rng.integers(0, 2, size=n_cells)
    rates = rng.gamma(2.0, 1.0, size=(2, n_genes))
    counts = rng.poisson(rates[cell_type]).astype(np.float32)
    adata = ad.AnnData(counts)
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    adata.obs["cell_type"] = pd.Categorical(np.where(cell_type == 0, "a", "b"))
    adata.obs["batch"] = pd.Categorical(np.where(np.arange(n_cells) % 2 == 0, "b1", "b2"))
    return adata


@pytest.fixture(scope="module")
def model() -> scamort.Model:
    """A tiny model trained for a few epochs."""
    trained = scamort.Model(make_counts(), n_latent=N_LATENT, n_hidden=16, seed=0)
    trained.train(max_epochs=3, progress_bar=False)
    return trained


@pytest.fixture
def adata() -> ad.AnnData:
    """Fresh cells with the model's genes (different seed: query cells)."""
    return make_counts(seed=1)


def test_embed_writes_obsm_and_params(adata: ad.AnnData, model: scamort.Model) -> None:
    obs_before, var_before = adata.obs.copy(), adata.var.copy()
    x_before = adata.X.copy()

    assert embed(adata, model) is None

    latent = adata.obsm["X_scamort"]
    assert latent.shape == (adata.n_obs, N_LATENT) and latent.dtype == np.float32
    np.testing.assert_allclose(latent, model.get_latent_representation(adata), rtol=1e-5)
    params = adata.uns["X_scamort"]["params"]
    assert params["representation"] == "posterior_mean"
    assert params["scamort_version"] == scamort.__version__
    assert params["init_params"]["n_latent"] == N_LATENT
    # nothing else is touched
    assert list(adata.obsm) == ["X_scamort"]
    assert list(adata.uns) == ["X_scamort"]
    pd.testing.assert_frame_equal(adata.obs, obs_before)
    pd.testing.assert_frame_equal(adata.var, var_before)
    np.testing.assert_array_equal(adata.X, x_before)
    assert not adata.layers and not adata.obsp


def test_embed_key_added(adata: ad.AnnData, model: scamort.Model) -> None:
    embed(adata, model, key_added="X_mine")
    assert "X_mine" in adata.obsm and "X_mine" in adata.uns
    assert "X_scamort" not in adata.obsm


def test_embed_copy_leaves_original_untouched(adata: ad.AnnData, model: scamort.Model) -> None:
    result = embed(adata, model, copy=True)
    assert isinstance(result, ad.AnnData) and result is not adata
    assert "X_scamort" in result.obsm and "X_scamort" in result.uns
    assert "X_scamort" not in adata.obsm and "X_scamort" not in adata.uns


def test_embedded_adata_writes_to_h5ad(tmp_path, adata: ad.AnnData, model: scamort.Model) -> None:
    embed(adata, model)
    adata.write_h5ad(tmp_path / "embedded.h5ad")
    back = ad.read_h5ad(tmp_path / "embedded.h5ad")
    np.testing.assert_array_equal(back.obsm["X_scamort"], adata.obsm["X_scamort"])
    assert back.uns["X_scamort"]["params"]["init_params"]["n_latent"] == N_LATENT


def test_neighbors_use_the_embedding(adata: ad.AnnData, model: scamort.Model) -> None:
    import scanpy as sc

    embed(adata, model)
    # method="gauss" skips umap's ~20 s numba compile; the demo test covers the default method
    sc.pp.neighbors(adata, use_rep="X_scamort", n_neighbors=10, method="gauss")
    assert adata.uns["neighbors"]["params"]["use_rep"] == "X_scamort"
    assert adata.obsp["connectivities"].shape == (adata.n_obs, adata.n_obs)


def test_tl_reexports_the_tools() -> None:
    from scamort import tl

    assert tl.embed is embed
    assert tl.write_embedding is write_embedding


def _with_embedding(n_cells: int = 30, n_dims: int = 5) -> ad.AnnData:
    rng = np.random.default_rng(3)
    adata = ad.AnnData(np.zeros((n_cells, 2), dtype=np.float32))
    adata.obs_names = [f"cell-{i}" for i in range(n_cells)]
    adata.obsm["X_scamort"] = rng.normal(size=(n_cells, n_dims)).astype(np.float32)
    return adata


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_embedding_round_trip_is_exact(tmp_path, suffix: str) -> None:
    adata = _with_embedding()
    path = write_embedding(adata, tmp_path / f"emb{suffix}")
    if suffix == ".csv":
        back = pd.read_csv(path, index_col=0, float_precision="round_trip")
    else:
        back = pd.read_parquet(path)
    assert list(back.index) == list(adata.obs_names)
    assert list(back.columns) == [f"X_scamort_{i}" for i in range(5)]
    np.testing.assert_array_equal(back.to_numpy(dtype=np.float32), adata.obsm["X_scamort"])


def test_write_embedding_float64_csv_round_trip_is_exact(tmp_path) -> None:
    adata = _with_embedding()
    adata.obsm["X_scamort"] = adata.obsm["X_scamort"].astype(np.float64) / 3.0
    path = write_embedding(adata, tmp_path / "emb.csv")
    back = pd.read_csv(path, index_col=0, float_precision="round_trip")
    np.testing.assert_array_equal(back.to_numpy(), adata.obsm["X_scamort"])


def test_write_embedding_other_key(tmp_path) -> None:
    adata = _with_embedding()
    adata.obsm["X_other"] = adata.obsm["X_scamort"][:, :2]
    frame = pd.read_csv(write_embedding(adata, tmp_path / "o.csv", key="X_other"), index_col=0)
    assert frame.shape == (adata.n_obs, 2)


def test_write_embedding_rejects_unknown_suffix(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"\.csv, \.parquet"):
        write_embedding(_with_embedding(), tmp_path / "emb.xlsx")


def test_write_embedding_missing_key_lists_available(tmp_path) -> None:
    with pytest.raises(KeyError, match="X_scamort") as info:
        write_embedding(_with_embedding(), tmp_path / "emb.csv", key="X_nope")
    assert "X_nope" in str(info.value)
    assert not (tmp_path / "emb.csv").exists()


def test_embedding_frame_keeps_dataframe_columns() -> None:
    adata = _with_embedding()
    adata.obsm["X_df"] = pd.DataFrame(
        {"u": np.arange(adata.n_obs), "v": np.ones(adata.n_obs)}, index=adata.obs_names
    )
    frame = embedding_frame(adata, key="X_df")
    assert list(frame.columns) == ["u", "v"]
    assert list(frame.index) == list(adata.obs_names)
