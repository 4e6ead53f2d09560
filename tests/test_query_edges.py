"""Queries at the edges of the data: a continuous covariate in other units, a MuData subset whose
modality has no cells left, and posterior predictive counts for cells that lack a modality."""

from __future__ import annotations

import mudata as md
import numpy as np
import pytest

import scamort
from scamort import InputError
from tests.conftest import make_counts

TRAIN = {"max_epochs": 3, "progress_bar": False}


def _with_score(units: tuple[float, float]) -> scamort.Model:
    adata = make_counts(n_cells=150, n_genes=20, seed=2)
    offset, scale = units
    adata.obs["score"] = offset + scale * adata.obs["score"].to_numpy()
    model = scamort.Model(adata, continuous_covariate_keys=["score"], seed=1)
    model.train(**TRAIN)
    return model


def test_a_continuous_covariate_in_other_units_gives_the_same_model() -> None:
    """The networks see the covariate standardised with the training cells' mean and sd."""
    standard, shifted = _with_score((0.0, 1.0)), _with_score((2000.0, 500.0))
    np.testing.assert_allclose(
        shifted.get_latent_representation(), standard.get_latent_representation(), atol=1e-3
    )
    assert shifted.registry.continuous_covariate_scaling[0][0] == pytest.approx(
        2000 + 500 * standard.registry.continuous_covariate_scaling[0][0]
    )


def test_covariate_scaling_survives_save_and_load(tmp_path) -> None:
    model = _with_score((2000.0, 500.0))
    model.save(tmp_path / "model")
    loaded = scamort.Model.load(tmp_path / "model", model.adata)
    assert loaded.registry.continuous_covariate_scaling == model.registry.continuous_covariate_scaling
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())


@pytest.fixture(scope="module")
def rna_and_some_protein() -> tuple[md.MuData, scamort.Model]:
    """200 cells with RNA, the first 150 of them with protein too."""
    rna = make_counts(n_cells=200, n_genes=30, seed=0)
    prot = make_counts(n_cells=200, n_genes=8, seed=1)
    prot.var_names = [f"p{i}" for i in range(8)]
    mdata = md.MuData({"rna": rna, "prot": prot[:150].copy()})
    mdata.obs["batch"] = rna.obs["batch"].to_numpy()
    model = scamort.Model(
        mdata, modalities={"rna": scamort.Modality(), "prot": scamort.Modality()}, batch_key="batch"
    )
    model.train(**TRAIN)
    return mdata, model


def test_a_subset_whose_modality_has_no_cells_left_is_a_valid_query(rna_and_some_protein) -> None:
    mdata, model = rna_and_some_protein
    rna_only = mdata[150:].copy()
    assert rna_only.mod["prot"].n_obs == 0
    np.testing.assert_array_equal(
        model.get_latent_representation(rna_only),
        model.get_latent_representation(indices=np.arange(150, 200)),
    )
    np.testing.assert_allclose(
        model.impute(rna_only, modality="prot").to_numpy(),
        model.impute(indices=np.arange(150, 200), modality="prot").to_numpy(),
        rtol=1e-6,
    )


def test_training_on_a_modality_without_cells_is_refused(rna_and_some_protein) -> None:
    mdata, _ = rna_and_some_protein
    with pytest.raises(InputError, match=r"Modality 'prot' has no measured cells"):
        scamort.Model(mdata[150:].copy(), modalities={"rna": scamort.Modality(), "prot": scamort.Modality()})


def test_predictive_counts_of_cells_lacking_a_modality_are_at_the_imputed_depth(rna_and_some_protein) -> None:
    _, model = rna_and_some_protein
    draws = model.posterior_predictive_sample(modality="prot", n_samples=30)
    expected = model.impute(modality="prot").to_numpy().sum(axis=1)
    sampled = draws.sum(axis=-1).mean(axis=0)
    for cells in (slice(0, 150), slice(150, 200)):  # measured, then lacking protein
        assert sampled[cells].mean() == pytest.approx(expected[cells].mean(), rel=0.1)


# ----------------------------------------------------------------------------- refinement keys
def test_refined_results_follow_the_cell_not_its_row() -> None:
    """Refinement noise is keyed on each cell's name: a reordered subset gets the same results."""
    adata = make_counts(n_cells=120, n_genes=20, seed=6)
    model = scamort.Model(adata, n_latent=3)
    model.train(**TRAIN)
    full = model.refine(n_steps=4).mean
    rows = np.array([7, 2, 99, 41])
    subset = model.refine(adata[rows].copy(), n_steps=4).mean
    np.testing.assert_allclose(subset, full[rows], atol=1e-5)
    reversed_latent = model.get_latent_representation(adata[::-1].copy(), refine_steps=4)
    in_order = model.get_latent_representation(refine_steps=4)
    np.testing.assert_allclose(reversed_latent[::-1], in_order, atol=1e-5)


# ----------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize(
    "library_size", [-5.0, 0, float("nan"), float("inf"), True, None, [1.0, 2.0], "total"]
)
def test_bad_library_sizes_are_refused(library_size) -> None:
    model = scamort.Model(make_counts(n_cells=40, n_genes=10))
    with pytest.raises(InputError, match="library_size must be a positive number or 'latent'"):
        model.get_normalized_expression(library_size=library_size)


def test_a_latent_library_without_a_head_is_refused() -> None:
    model = scamort.Model(make_counts(n_cells=40, n_genes=10))
    with pytest.raises(InputError, match="has no library-size head"):
        model.get_normalized_expression(library_size="latent")


@pytest.mark.parametrize("steps", [5, (2.7,), (), (0,), (True,)])
def test_bad_amortization_gap_steps_are_refused(steps) -> None:
    model = scamort.Model(make_counts(n_cells=40, n_genes=10))
    with pytest.raises(InputError, match="steps must be a non-empty sequence of positive integers"):
        model.amortization_gap(steps=steps, n_optimum_steps=10)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_cells": 0}, "n_cells must be a whole number >= 1"),
        ({"n_cells": 2.5}, "n_cells must be a whole number >= 1"),
        ({"n_cells": 10, "chunk_size": 0}, "chunk_size must be a whole number >= 1"),
        ({"n_cells": 10, "thinning": (0.5, 1.5)}, r"thinning must be a range \(low, high\)"),
    ],
)
def test_grow_refuses_bad_options_before_any_work(options, message) -> None:
    from scamort.scale import grow

    with pytest.raises(InputError, match=message):
        grow(make_counts(n_cells=30, n_genes=10), **options)


def test_grow_refuses_non_count_sources() -> None:
    from scamort.scale import grow

    source = make_counts(n_cells=30, n_genes=10)
    source.X = source.X * 0.3
    with pytest.raises(InputError, match="non-integer entries"):
        grow(source, 10)
