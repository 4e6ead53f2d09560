"""Differential expression: statistics against hand-computed oracles, and markers recovered on data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scamort
import scamort.differential
from scamort.differential import (
    change_statistics,
    differential_expression,
    estimate_pseudocount,
    fdr_de_flags,
    posterior_expected_fdr,
    vanilla_statistics,
)
from scamort.errors import InputError

N_GENES = 60
UP_IN_A = [f"gene{g}" for g in range(0, 4)]
UP_IN_B = [f"gene{g}" for g in range(4, 8)]
TRUE_DE = set(UP_IN_A + UP_IN_B)


def make_two_groups(n_cells: int = 300, seed: int = 0) -> ad.AnnData:
    """Counts of two groups A/B in two batches: genes 0-3 are 8x higher in A, genes 4-7 8x higher in B.

    The eight genes carry little of the total expression, so the other genes' proportions change by
    far less than the DE threshold (|log2 fold change| < 0.1): they are the true nulls.
    """
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 1.0, size=N_GENES)
    base[:8] = 2.0
    programme = np.tile(base, (2, 1))
    programme[0, :4] *= 8.0
    programme[1, 4:8] *= 8.0
    group = rng.integers(2, size=n_cells)
    batch = rng.integers(2, size=n_cells)
    batch_effect = rng.lognormal(0.0, 0.3, size=(2, N_GENES))
    proportions = programme[group] * batch_effect[batch]
    proportions /= proportions.sum(1, keepdims=True)
    library = rng.lognormal(np.log(800), 0.3, size=n_cells)
    mu = proportions * library[:, None]
    counts = rng.poisson(rng.gamma(5.0, mu / 5.0)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "group": pd.Categorical(np.where(group == 0, "A", "B"), categories=["A", "B", "empty"]),
            "batch": pd.Categorical([f"b{b}" for b in batch]),
            "number": group,
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    return ad.AnnData(
        sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"gene{g}" for g in range(N_GENES)])
    )


@pytest.fixture(scope="module")
def trained() -> tuple[scamort.Model, ad.AnnData]:
    import torch

    torch.manual_seed(0)
    adata = make_two_groups()
    model = scamort.Model(adata, batch_key="batch", n_latent=5, n_hidden=32, seed=0)
    model.train(max_epochs=60, batch_size=32, lr=3e-3, progress_bar=False)
    return model, adata


# ------------------------------------------------------------------------------------ pure statistics
def test_change_statistics_match_hand_computation() -> None:
    scales1 = np.array([[0.4, 0.1], [0.2, 0.1], [0.1, 0.1], [0.8, 0.1]])
    scales2 = np.array([[0.1, 0.1], [0.2, 0.1], [0.2, 0.1], [0.1, 0.1]])
    lfc = np.log2(scales1) - np.log2(scales2)  # [[2, 0], [0, 0], [-1, 0], [3, 0]]
    stats = change_statistics(scales1, scales2, delta=0.5)
    np.testing.assert_allclose(stats["proba_de"], [0.75, 0.0])
    np.testing.assert_allclose(stats["proba_not_de"], [0.25, 1.0])
    np.testing.assert_allclose(stats["lfc_mean"], lfc.mean(0))
    np.testing.assert_allclose(stats["lfc_median"], [1.0, 0.0])
    np.testing.assert_allclose(stats["lfc_std"], lfc.std(0))
    np.testing.assert_allclose(stats["lfc_min"], [-1.0, 0.0])
    np.testing.assert_allclose(stats["lfc_max"], [3.0, 0.0])
    np.testing.assert_allclose(stats["bayes_factor"][0], np.log(0.75 / 0.25), rtol=1e-6)
    assert stats["bayes_factor"][1] < -15  # p = 0 stays finite


def test_change_statistics_pseudocount_and_delta() -> None:
    scales1, scales2 = np.array([[0.0, 0.3]]), np.array([[0.0, 0.1]])
    stats = change_statistics(scales1, scales2, delta=1.0, pseudocount=0.1)
    np.testing.assert_allclose(stats["lfc_mean"], [0.0, 1.0])
    np.testing.assert_allclose(stats["proba_de"], [0.0, 1.0])  # |LFC| >= delta counts
    with pytest.raises(InputError, match="delta"):
        change_statistics(scales1, scales2, delta=0.0)
    with pytest.raises(ValueError, match="shape"):
        change_statistics(scales1, np.zeros((2, 2)), delta=1.0)


def test_vanilla_statistics() -> None:
    scales1 = np.array([[0.3, 0.1], [0.3, 0.1], [0.1, 0.1], [0.3, 0.0]])
    scales2 = np.full((4, 2), 0.2)
    stats = vanilla_statistics(scales1, scales2)
    np.testing.assert_allclose(stats["proba_m1"], [0.75, 0.0])
    np.testing.assert_allclose(stats["proba_m2"], [0.25, 1.0])
    np.testing.assert_allclose(stats["bayes_factor"][0], np.log(3.0), rtol=1e-6)


def test_posterior_expected_fdr_and_flags() -> None:
    proba = np.array([0.5, 0.99, 0.9, 0.97, 0.2])
    # sorted: 0.99, 0.97, 0.9, 0.5, 0.2 -> running mean of 1 - p: 0.01, 0.02, 0.0467, 0.16, 0.288
    np.testing.assert_allclose(posterior_expected_fdr(proba), [0.01, 0.02, 0.14 / 3, 0.64 / 4, 1.44 / 5])
    np.testing.assert_array_equal(fdr_de_flags(proba, 0.05), [False, True, True, True, False])
    np.testing.assert_array_equal(fdr_de_flags(proba, 0.015), [False, True, False, False, False])
    assert not fdr_de_flags(np.array([0.5, 0.4]), 0.05).any()
    # the longest prefix below the target, even where the running mean is not monotone
    np.testing.assert_array_equal(fdr_de_flags(np.array([0.9, 1.0, 1.0]), 0.05), [True, True, True])
    with pytest.raises(InputError, match="fdr_target"):
        fdr_de_flags(proba, 1.5)


def test_estimate_pseudocount() -> None:
    scales1 = np.array([[0.5, 0.02, 0.48], [0.5, 0.04, 0.46]])
    scales2 = np.array([[0.5, 0.01, 0.49], [0.5, 0.01, 0.49]])
    absent = np.array([False, True, False])
    assert estimate_pseudocount(scales1, scales2, absent, absent, quantile=1.0) == pytest.approx(0.04 / 3)
    nothing = np.zeros(3, dtype=bool)
    assert estimate_pseudocount(scales1, scales2, nothing, nothing) == pytest.approx(1e-10)


# ------------------------------------------------------------------------------------ on a trained model
def test_true_markers_come_out_on_top(trained: tuple[scamort.Model, ad.AnnData]) -> None:
    model, _ = trained
    de = differential_expression(model, groupby="group", group1="A", n_samples=2000)
    assert set(de.index[: len(TRUE_DE)]) == TRUE_DE
    assert (de.loc[UP_IN_A, "lfc_mean"] > 1.5).all()
    assert (de.loc[UP_IN_B, "lfc_mean"] < -1.5).all()
    assert (de.loc[list(TRUE_DE), "proba_de"] > 0.95).all()
    assert (de.loc[list(TRUE_DE), "bayes_factor"] > 3).all()
    # sorted by evidence
    assert de["proba_de"].is_monotonic_decreasing
    assert (de["group1"] == "A").all() and (de["group2"] == "rest").all()


def test_fdr_flags_are_sane(trained: tuple[scamort.Model, ad.AnnData]) -> None:
    model, _ = trained
    de = differential_expression(model, groupby="group", group1="A", n_samples=2000, fdr_target=0.05)
    called = de["is_de_fdr_0.05"].to_numpy()
    # the calls are a prefix of the evidence order, with a posterior expected FDR within the target
    assert called.sum() >= 1 and not called[called.sum() :].any()
    assert (1 - de["proba_de"][called]).mean() <= 0.05
    assert TRUE_DE <= set(de.index[called])
    null_called = sorted(set(de.index[called]) - TRUE_DE)
    assert len(null_called) <= 0.1 * (N_GENES - len(TRUE_DE)), null_called
    strict = differential_expression(model, groupby="group", group1="A", n_samples=2000, fdr_target=0.001)
    assert strict["is_de_fdr_0.001"].sum() <= called.sum()


def test_columns_index_and_no_mutation(trained: tuple[scamort.Model, ad.AnnData]) -> None:
    model, adata = trained
    obs_before = adata.obs.copy()
    de = differential_expression(model, groupby="group", group1="B", group2="A", n_samples=200)
    expected = {
        "proba_de",
        "proba_not_de",
        "bayes_factor",
        "lfc_mean",
        "lfc_median",
        "lfc_std",
        "lfc_min",
        "lfc_max",
        "scale1",
        "scale2",
        "raw_mean1",
        "raw_mean2",
        "non_zeros_proportion1",
        "non_zeros_proportion2",
        "raw_normalized_mean1",
        "raw_normalized_mean2",
        "is_de_fdr_0.05",
        "delta",
        "pseudocount",
        "n_cells_measured1",
        "n_cells_measured2",
        "group1",
        "group2",
    }
    assert set(de.columns) == expected
    assert sorted(de.index) == sorted(adata.var_names)
    np.testing.assert_allclose(de["scale1"].sum(), 1.0, rtol=1e-4)
    raw_b = np.asarray(adata[adata.obs["group"] == "B"].X.mean(axis=0)).ravel()
    np.testing.assert_allclose(de.loc[adata.var_names, "raw_mean1"], raw_b, rtol=1e-5)
    assert (de["group1"] == "B").all() and (de["group2"] == "A").all()
    pd.testing.assert_frame_equal(adata.obs, obs_before)
    assert "group" not in adata.uns


def test_seeded_and_rest_equals_only_other_group(trained: tuple[scamort.Model, ad.AnnData]) -> None:
    model, _ = trained
    first = differential_expression(model, groupby="group", group1="A", n_samples=300, seed=3)
    again = differential_expression(model, groupby="group", group1="A", n_samples=300, seed=3)
    pd.testing.assert_frame_equal(first, again)
    # with two groups, "rest" is group B: the same cells, the same draws
    explicit = differential_expression(model, groupby="group", group1="A", group2="B", n_samples=300, seed=3)
    pd.testing.assert_frame_equal(first.drop(columns="group2"), explicit.drop(columns="group2"))
    other = differential_expression(model, groupby="group", group1="A", n_samples=300, seed=4)
    assert not np.allclose(first["lfc_mean"], other.loc[first.index, "lfc_mean"])


def test_feature_blocks_give_the_same_table(
    trained: tuple[scamort.Model, ad.AnnData], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = trained
    for mode in ("change", "vanilla"):
        whole = differential_expression(model, groupby="group", group1="A", mode=mode, n_samples=300)
        monkeypatch.setattr(scamort.differential, "_FEATURE_CHUNK", 7)
        blocks = differential_expression(model, groupby="group", group1="A", mode=mode, n_samples=300)
        monkeypatch.undo()
        pd.testing.assert_frame_equal(whole, blocks)


def test_vanilla_mode(trained: tuple[scamort.Model, ad.AnnData]) -> None:
    model, _ = trained
    de = differential_expression(model, groupby="group", group1="A", mode="vanilla", n_samples=1000)
    assert {"proba_m1", "proba_m2", "bayes_factor"} <= set(de.columns)
    assert not any(c.startswith("is_de_fdr") or c.startswith("proba_de") for c in de.columns)
    assert (de.loc[UP_IN_A, "proba_m1"] > 0.95).all()
    assert (de.loc[UP_IN_B, "proba_m1"] < 0.05).all()
    assert set(de.index[: len(TRUE_DE)]) == TRUE_DE
    assert de["bayes_factor"].abs().is_monotonic_decreasing


def test_batch_correction_options_and_new_cells(trained: tuple[scamort.Model, ad.AnnData]) -> None:
    model, adata = trained
    uncorrected = differential_expression(
        model, groupby="group", group1="A", batch_correction=False, n_samples=1000
    )
    assert set(uncorrected.index[: len(TRUE_DE)]) == TRUE_DE
    # an AnnData given explicitly (a subset of the cells; integer-valued groups work too)
    subset = adata[:150].copy()
    de = differential_expression(model, subset, groupby="number", group1=0, n_samples=500)
    assert (de["group1"] == "0").all()
    assert set(de.index[:8]) == TRUE_DE


def test_model_without_batches_and_other_modality() -> None:
    adata = make_two_groups(n_cells=80)
    adata.obsm["protein_expression"] = pd.DataFrame(
        np.random.default_rng(0).poisson(5.0, size=(80, 4)).astype(np.float32),
        index=adata.obs_names,
        columns=["P1", "P2", "P3", "P4"],
    )
    model = scamort.Model(
        adata,
        modalities={"rna": scamort.Modality(), "prot": scamort.Modality(obsm_key="protein_expression")},
        n_hidden=16,
    )
    de = differential_expression(model, groupby="group", group1="A", modality="prot", n_samples=50)
    assert sorted(de.index) == ["P1", "P2", "P3", "P4"]
    with pytest.raises(InputError, match="Unknown modality"):
        differential_expression(model, groupby="group", group1="A", modality="atac", n_samples=50)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"groupby": "nope", "group1": "A"}, "groupby='nope' is not a column"),
        ({"groupby": "group", "group1": "C"}, "group1='C' is not a group"),
        ({"groupby": "group", "group1": "A", "group2": "Z"}, "group2='Z' is not a group"),
        ({"groupby": "group", "group1": "empty"}, "'empty' .* has no cells"),
        ({"groupby": "group", "group1": "A", "group2": "A"}, "the same group"),
        ({"groupby": "group", "group1": "A", "mode": "bayes"}, "mode='bayes'"),
        ({"groupby": "group", "group1": "A", "delta": 0}, "delta"),
        ({"groupby": "group", "group1": "A", "fdr_target": 0}, "fdr_target"),
        ({"groupby": "group", "group1": "A", "n_samples": 1}, "n_samples"),
        ({"groupby": "group", "group1": "A", "pseudocount": -1.0}, "pseudocount"),
    ],
)
def test_clear_errors(trained: tuple[scamort.Model, ad.AnnData], options: dict, match: str) -> None:
    model, _ = trained
    with pytest.raises(InputError, match=match):
        differential_expression(model, **options)


def test_rest_of_a_single_group_is_empty() -> None:
    adata = make_two_groups(n_cells=40)
    adata.obs["one"] = "all"
    model = scamort.Model(adata, n_hidden=8)
    with pytest.raises(InputError, match=r"'rest' .* has no cells"):
        differential_expression(model, groupby="one", group1="all", n_samples=10)
    with pytest.raises(InputError, match="AnnData or MuData"):
        differential_expression(model, adata.X, groupby="one", group1="all")


def test_model_method_delegates(trained: tuple[scamort.Model, ad.AnnData]) -> None:
    model, _ = trained
    via_method = model.differential_expression(groupby="group", group1="A", n_samples=300)
    direct = differential_expression(model, groupby="group", group1="A", n_samples=300)
    pd.testing.assert_frame_equal(via_method, direct)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seed": -1}, r"seed must be an integer >= 0, got -1"),
        ({"seed": 1.5}, r"seed must be an integer >= 0, got 1\.5"),
        ({"delta": "a"}, r"delta must be positive"),
        ({"fdr_target": "a"}, r"fdr_target must lie in \(0, 1\)"),
        ({"pseudocount": float("nan")}, r"pseudocount must be >= 0 or None"),
    ],
)
def test_bad_options_are_refused_before_any_work(trained, options, message, monkeypatch) -> None:
    model, adata = trained

    def no_work(*args, **kwargs):
        raise AssertionError("the cells were encoded before the options were checked")

    monkeypatch.setattr(scamort.differential, "encode_cells", no_work)
    with pytest.raises(InputError, match=message):
        differential_expression(model, adata, groupby="group", group1="A", **options)


def test_whole_number_labels_stored_as_float_match_integer_groups(trained) -> None:
    model, adata = trained
    labelled = adata.copy()
    codes = labelled.obs["number"].astype(float).to_numpy()
    codes[:5] = np.nan  # integer labels beside NaN are stored as float: 1.0, 2.0, ...
    labelled.obs["code"] = codes
    by_int = differential_expression(model, labelled, groupby="code", group1=1, n_samples=200)
    by_float = differential_expression(model, labelled, groupby="code", group1=1.0, n_samples=200)
    pd.testing.assert_frame_equal(by_int, by_float)
    assert (by_int["group1"] == "1").all()
