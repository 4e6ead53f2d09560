"""Every kind of bad input is refused with one clear sentence, before any work, and nothing is modified."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import scamort
from scamort import InputError
from tests.conftest import make_counts


def snapshot(adata: ad.AnnData) -> ad.AnnData:
    """A deep copy to compare against after scamort has seen ``adata``."""
    return adata.copy()


def assert_unchanged(adata: ad.AnnData, before: ad.AnnData) -> None:
    """Everything users keep in an AnnData is exactly as it was."""
    for left, right in (
        (adata.X, before.X),
        *((adata.layers[k], before.layers[k]) for k in before.layers),
    ):
        left = left.toarray() if sp.issparse(left) else np.asarray(left)
        right = right.toarray() if sp.issparse(right) else np.asarray(right)
        np.testing.assert_array_equal(left, right)
    assert list(adata.layers) == list(before.layers)
    assert adata.obs.equals(before.obs) and adata.var.equals(before.var)
    assert list(adata.obsm) == list(before.obsm) and list(adata.uns) == list(before.uns)
    assert list(adata.obs_names) == list(before.obs_names)


def _with_value(adata: ad.AnnData, value: float, where=(3, 2)) -> ad.AnnData:
    dense = adata.X.toarray()
    dense[where] = value
    adata.X = sp.csr_matrix(dense)
    return adata


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2.5, r"adata.X has 1 non-integer entries \(first at cell 'cell3', feature 'gene2'\)"),
        (-1.0, r"adata.X has 1 negative entries \(first at cell 'cell3', feature 'gene2'\)"),
        (np.nan, r"adata.X has 1 NaN or infinite entries"),
        (np.inf, r"adata.X has 1 NaN or infinite entries"),
    ],
)
def test_bad_values_are_refused_with_location(value: float, message: str) -> None:
    adata = _with_value(make_counts(), value)
    before = snapshot(adata)
    with pytest.raises(InputError, match=message):
        scamort.Model(adata)
    assert_unchanged(adata, before)


def test_dense_input_is_checked_too() -> None:
    adata = make_counts(sparse=False)
    adata.X[0, 0] = 0.5
    with pytest.raises(InputError, match="non-integer"):
        scamort.Model(adata)


def test_empty_cells_are_counted_and_the_fix_is_named() -> None:
    adata = make_counts()
    dense = adata.X.toarray()
    dense[[4, 9]] = 0
    adata.X = sp.csr_matrix(dense)
    with pytest.raises(InputError, match=r"2 cells have zero total counts \(e.g. 'cell4'\).*filter_cells"):
        scamort.Model(adata)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layer": "raw"}, r"layer 'raw' not found in adata.layers \(available: 'counts'\)"),
        ({"batch_key": "donor"}, r"batch_key 'donor' is not a column of adata.obs"),
        ({"labels_key": "celltype"}, r"labels_key 'celltype' is not a column"),
        ({"categorical_covariate_keys": ["nope"]}, r"Categorical covariate 'nope' is not a column"),
        ({"continuous_covariate_keys": ["cell_type"]}, r"must be numeric"),
        ({"likelihood": "gaussian"}, r"likelihood='gaussian' is not supported"),
        ({"dispersion": "cell"}, r"dispersion='cell' is not supported"),
        ({"n_latent": 0}, r"n_latent must be an integer >= 1"),
        ({"dropout_rate": 1.5}, r"dropout_rate must be a number in \[0, 1\), got 1.5"),
        ({"dropout_rate": "0.1"}, r"dropout_rate must be a number in \[0, 1\), got .0.1."),
        ({"n_latent": True}, r"n_latent must be an integer >= 1, got True"),
        ({"seed": False}, r"seed must be an integer >= 0, got False"),
        ({"mixing_weight": True}, r"mixing_weight must be a finite number >= 0, got True"),
        ({"alignment_weight": float("nan")}, r"alignment_weight must be a finite number >= 0, got nan"),
    ],
)
def test_unknown_keys_and_options_are_refused(counts_adata, kwargs, message) -> None:
    before = snapshot(counts_adata)
    with pytest.raises(InputError, match=message):
        scamort.Model(counts_adata, **kwargs)
    assert_unchanged(counts_adata, before)


def test_batch_column_with_missing_values_is_refused(counts_adata) -> None:
    counts_adata.obs["batch"] = counts_adata.obs["batch"].astype(object)
    counts_adata.obs.iloc[7, counts_adata.obs.columns.get_loc("batch")] = np.nan
    with pytest.raises(InputError, match=r"batch_key 'batch' has 1 missing \(NaN\) values"):
        scamort.Model(counts_adata, batch_key="batch")


def test_too_few_cells_for_the_validation_split() -> None:
    model = scamort.Model(make_counts(n_cells=4))
    with pytest.raises(InputError, match="leaves no validation cell out of 4"):
        model.train(max_epochs=1, progress_bar=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_epochs": 0}, "max_epochs must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"train_size": 1.5}, r"train_size must be in \(0, 1\]"),
        ({"lr": -1.0}, "lr must be positive"),
        ({"lr": True}, "lr must be a finite number, got True"),
        ({"max_seconds": True}, "max_seconds must be a positive number or None, got True"),
        ({"max_seconds": float("nan")}, "max_seconds must be a positive number or None, got nan"),
        ({"device": "tpu"}, "Unknown device 'tpu'"),
    ],
)
def test_bad_training_options(counts_adata, kwargs, message) -> None:
    model = scamort.Model(counts_adata)
    with pytest.raises(InputError, match=message):
        model.train(**{"max_epochs": 1, "progress_bar": False, **kwargs})
    assert not model.is_trained


def test_model_and_train_leave_the_anndata_untouched(counts_adata) -> None:
    counts_adata.obsm["X_pca"] = np.ones((counts_adata.n_obs, 2))
    counts_adata.uns["note"] = "keep me"
    before = snapshot(counts_adata)
    model = scamort.Model(counts_adata, layer="counts", batch_key="batch")
    model.train(max_epochs=2, progress_bar=False)
    model.get_latent_representation()
    model.get_elbo()
    assert_unchanged(counts_adata, before)


def test_query_with_unseen_batch_or_missing_genes(counts_adata) -> None:
    model = scamort.Model(counts_adata, batch_key="batch")
    query = make_counts(n_cells=20, seed=3)
    query.obs["batch"] = "b7"
    with pytest.raises(InputError, match=r"categories the model was not trained on \('b7'\)"):
        model.get_latent_representation(query)
    with pytest.raises(InputError, match="lacks 5 of the model's 60 features"):
        model.get_latent_representation(make_counts(n_cells=20)[:, 5:])
