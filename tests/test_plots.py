"""Tests for scamort.pl: every plot returns a Figure and never shows."""

from __future__ import annotations

from collections.abc import Iterator

import anndata as ad
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from scamort import pl

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def history_frame(n_epochs: int = 12, validation: bool = True) -> pd.DataFrame:
    """A training history shaped like ``Model.train``'s."""
    epoch = np.arange(1, n_epochs + 1)
    train = -200.0 + 80.0 * (1.0 - np.exp(-epoch / 4.0))
    return pd.DataFrame(
        {
            "epoch": epoch,
            "kl_weight": np.minimum(epoch / 8.0, 1.0),
            "train_elbo": train,
            "train_reconstruction": train + 5.0,
            "train_kl": np.full(n_epochs, 5.0),
            "validation_elbo": train - 3.0 if validation else np.nan,
            "validation_reconstruction": train + 2.0 if validation else np.nan,
            "validation_kl": np.full(n_epochs, 5.0 if validation else np.nan),
            "seconds": np.full(n_epochs, 0.1),
        }
    )


def _line_labels(fig: Figure) -> list[str]:
    return [line.get_label() for ax in fig.axes for line in ax.get_lines()]


def test_history_from_dataframe_draws_train_validation_and_kl_weight() -> None:
    fig = pl.history(history_frame())
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # ELBO axes and its KL-weight twin
    assert _line_labels(fig) == ["train ELBO", "validation ELBO", "KL weight"]


def test_history_marks_where_each_training_stage_begins() -> None:
    frame = history_frame().assign(stage=["pretrain"] * 5 + ["all"] * 7)
    fig = pl.history(frame)
    elbo_axes = fig.axes[0]
    vertical = [line for line in elbo_axes.get_lines() if line.get_label().startswith("_")]
    assert len(vertical) == 1 and list(vertical[0].get_xdata()) == [5.5, 5.5]
    assert [text.get_text() for text in elbo_axes.texts] == ["pretrain", "all"]
    assert [text.xy[0] for text in elbo_axes.texts] == [1, 6]
    assert not pl.history(history_frame()).axes[0].texts  # one stage: nothing marked


def test_history_without_validation_skips_that_curve() -> None:
    fig = pl.history(history_frame(validation=False))
    assert _line_labels(fig) == ["train ELBO", "KL weight"]


def test_history_draws_on_given_axes() -> None:
    fig, ax = plt.subplots()
    assert pl.history(history_frame(), ax=ax) is fig


def test_history_from_a_model_like_object() -> None:
    class Trained:
        history = history_frame(5)

    assert isinstance(pl.history(Trained()), Figure)


def test_history_from_trained_model() -> None:
    import scamort

    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.poisson(2.0, size=(60, 20)).astype(np.float32))
    model = scamort.Model(adata, n_latent=2, n_hidden=8)
    model.train(max_epochs=2, progress_bar=False)
    fig = pl.history(model)
    assert isinstance(fig, Figure)
    assert "train ELBO" in _line_labels(fig)


def test_history_rejects_objects_without_history() -> None:
    with pytest.raises(ValueError, match="history"):
        pl.history(object())
    with pytest.raises(ValueError, match="train_elbo"):
        pl.history(pd.DataFrame({"epoch": [1, 2]}))


@pytest.fixture
def adata_umap() -> ad.AnnData:
    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.poisson(1.0, size=(50, 6)).astype(np.float32))
    adata.obs_names = [f"c{i}" for i in range(50)]
    adata.var_names = [f"g{j}" for j in range(6)]
    adata.obsm["X_umap"] = rng.normal(size=(50, 2))
    adata.obs["label"] = pd.Categorical(rng.choice(["x", "y", "z"], size=50))
    adata.obs["leiden"] = pd.Categorical(rng.choice(["0", "1"], size=50))
    return adata


def test_embedding_returns_figure(adata_umap: ad.AnnData) -> None:
    fig = pl.embedding(adata_umap, "umap", color="label")
    assert isinstance(fig, Figure)


def test_embedding_writes_only_what_its_docstring_says(adata_umap: ad.AnnData) -> None:
    adata_umap.obs["kind"] = np.where(np.arange(50) % 2 == 0, "even", "odd")  # a string column
    before_x, before_umap = adata_umap.X.copy(), adata_umap.obsm["X_umap"].copy()
    pl.embedding(adata_umap, color=["kind", "g0"])
    assert set(adata_umap.uns) == {"kind_colors"}
    assert isinstance(adata_umap.obs["kind"].dtype, pd.CategoricalDtype)
    np.testing.assert_array_equal(adata_umap.X, before_x)
    np.testing.assert_array_equal(adata_umap.obsm["X_umap"], before_umap)
    assert list(adata_umap.obs.columns) == ["label", "leiden", "kind"]


def test_embedding_side_by_side_panels(adata_umap: ad.AnnData) -> None:
    fig = pl.embedding(adata_umap, color=["label", "leiden"])
    assert isinstance(fig, Figure)
    titles = {ax.get_title() for ax in fig.axes}
    assert {"label", "leiden"} <= titles


def test_embedding_on_given_axes(adata_umap: ad.AnnData) -> None:
    fig, ax = plt.subplots()
    assert pl.embedding(adata_umap, "X_umap", color="g0", ax=ax) is fig


def test_embedding_missing_basis_is_a_clear_error(adata_umap: ad.AnnData) -> None:
    with pytest.raises(KeyError, match="X_umap"):
        pl.embedding(adata_umap, "tsne", color="label")


def test_confusion_matrix_rows_are_fractions_of_true_labels() -> None:
    true = np.array(["a", "a", "a", "b", "b", "c"])
    predicted = np.array(["a", "a", "b", "b", "b", "unknown"])
    fig = pl.confusion_matrix(true, predicted)
    assert isinstance(fig, Figure)
    image = fig.axes[0].get_images()[0].get_array()
    expected = np.array([[2 / 3, 1 / 3, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(np.asarray(image), expected)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c", "unknown"]
    assert "accuracy 0.667" in fig.axes[0].get_title()


def test_reliability_diagram_shows_the_ece() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.3, 1.0, 500)
    correct = rng.random(500) < confidence - 0.1
    fig = pl.reliability_diagram(confidence, correct, n_bins=15)
    assert isinstance(fig, Figure)
    bins = np.clip(np.ceil(confidence * 15).astype(int) - 1, 0, 14)
    ece = sum(
        np.mean(bins == b) * abs(confidence[bins == b].mean() - correct[bins == b].mean()) for b in set(bins)
    )
    assert f"ECE {ece:.3f}" in fig.axes[0].get_title()


def test_label_plots_refuse_mismatched_lengths() -> None:
    from scamort.errors import InputError

    with pytest.raises(InputError, match="one label per cell"):
        pl.confusion_matrix(["a", "b"], ["a"])
    with pytest.raises(InputError, match="one entry per cell"):
        pl.reliability_diagram([0.5, 0.7], [True])
