"""Feature-level missingness: Modality(measured_key=...), scamort.pp.concat_panels, masked likelihoods.

Tiny synthetic CITE-seq-like data (RNA in ``X``, 8 proteins in ``obsm["protein"]``): the second batch
was stained with a smaller panel.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
import torch

import scamort
from scamort import InputError
from scamort.data.measured import MeasuredPatterns
from scamort.data.sparse_batch import SparseBatch
from scamort.distributions import NegativeBinomial, SoftmaxNegativeBinomial
from scamort.masked_likelihood import masked_log_prob_rows, renormalised
from tests.conftest import make_counts

N_PROTEINS = 8
HIDDEN = ["CD5", "CD6", "CD7"]  # unmeasured in batch b1


def make_cite(n_cells: int = 120, seed: int = 0) -> ad.AnnData:
    """RNA counts (``X``) and protein counts (``obsm["protein"]``) driven by the same 3 cell types, and a
    per-cell mask ``obsm["protein_measured"]`` (False for :data:`HIDDEN` in batch ``b1``)."""
    adata = make_counts(n_cells=n_cells, n_genes=30, seed=seed)
    rng = np.random.default_rng(seed + 100)
    cell_type = adata.obs["cell_type"].cat.codes.to_numpy()
    means = rng.gamma(1.0, 30.0, size=(3, N_PROTEINS))
    counts = rng.poisson(rng.gamma(4.0, means[cell_type] / 4.0)).astype(np.float32)
    columns = [f"CD{i}" for i in range(N_PROTEINS)]
    adata.obsm["protein"] = pd.DataFrame(counts, index=adata.obs_names, columns=columns)
    measured = np.ones(counts.shape, dtype=bool)
    measured[np.ix_(adata.obs["batch"].to_numpy() == "b1", [columns.index(c) for c in HIDDEN])] = False
    adata.obsm["protein_measured"] = pd.DataFrame(measured, index=adata.obs_names, columns=columns)
    return adata


def modalities(measured_key: str | None = "protein_measured") -> dict[str, scamort.Modality]:
    return {
        "rna": scamort.Modality(),
        "prot": scamort.Modality(obsm_key="protein", likelihood="nbmixture", measured_key=measured_key),
    }


def build(adata: ad.AnnData, measured_key: str | None = "protein_measured", **options) -> scamort.Model:
    return scamort.Model(adata, modalities=modalities(measured_key), batch_key="batch", seed=3, **options)


def scramble_under_mask(adata: ad.AnnData, seed: int = 1) -> ad.AnnData:
    """A copy with large random counts wherever the mask says unmeasured."""
    other = adata.copy()
    protein = other.obsm["protein"].copy()
    unmeasured = ~other.obsm["protein_measured"].to_numpy()
    values = protein.to_numpy()
    values[unmeasured] = np.random.default_rng(seed).integers(0, 500, size=int(unmeasured.sum()))
    other.obsm["protein"] = pd.DataFrame(values, index=protein.index, columns=protein.columns)
    return other


def elbo(model: scamort.Model) -> float:
    """The model's ELBO with its one posterior sample per cell drawn from a fixed seed."""
    torch.manual_seed(0)
    return model.get_elbo()


def _same_state(first: scamort.Model, second: scamort.Model) -> None:
    a, b = first.module.state_dict(), second.module.state_dict()
    for key in a.keys() & b.keys():
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------- invariance
def test_values_under_the_mask_change_neither_latent_nor_elbo_nor_a_training_step() -> None:
    adata = make_cite()
    scrambled = scramble_under_mask(adata)
    first, second = build(adata), build(scrambled)
    assert np.array_equal(first.get_latent_representation(), second.get_latent_representation())
    assert elbo(first) == elbo(second)
    for model in (first, second):
        model.train(max_epochs=2, batch_size=32, progress_bar=False)
    _same_state(first, second)
    assert np.array_equal(first.get_latent_representation(), second.get_latent_representation())
    assert elbo(first) == elbo(second)
    assert np.array_equal(first.impute(modality="prot").to_numpy(), second.impute(modality="prot").to_numpy())


def test_an_all_measured_mask_gives_the_model_without_a_mask() -> None:
    adata = make_cite()
    adata.obsm["all"] = pd.DataFrame(True, index=adata.obs_names, columns=adata.obsm["protein"].columns)
    masked, plain = build(adata, "all"), build(adata, None)
    for model in (masked, plain):
        model.train(max_epochs=2, batch_size=32, progress_bar=False)
    _same_state(masked, plain)
    extra = set(masked.module.state_dict()) - set(plain.module.state_dict())
    panel_keys = {key for key in extra if key.startswith("panel_classifiers.prot.")}
    assert extra - panel_keys == {"encoders.prot.missing_weight"}
    assert not masked.module.encoders["prot"].missing_weight.any()
    assert not masked.module.panel_classifiers["prot"].varying.any()  # one panel: nothing to mix
    assert np.array_equal(masked.get_latent_representation(), plain.get_latent_representation())
    assert elbo(masked) == elbo(plain)


def test_the_per_batch_table_gives_the_same_model_as_the_matrix() -> None:
    adata = make_cite()
    table = pd.DataFrame(
        True, index=pd.Index(["b0", "b1"], name="batch"), columns=adata.obsm["protein"].columns
    )
    table.loc["b1", HIDDEN] = False
    adata.uns["panels"] = table
    from_matrix, from_table = build(adata), build(adata, "panels")
    for model in (from_matrix, from_table):
        model.train(max_epochs=2, batch_size=32, progress_bar=False)
    _same_state(from_matrix, from_table)


def test_the_encoder_reads_nothing_at_unmeasured_features() -> None:
    from scamort.nn.encoder import GaussianEncoder

    torch.manual_seed(0)
    encoder = GaussianEncoder(5, 3, 8, 1, 0.0, masked=True).eval()
    with torch.no_grad():
        encoder.missing_weight.normal_()
    measured = torch.tensor([[True, True, False, True, False], [True, True, True, True, True]])
    counts = torch.tensor([[1.0, 0.0, 7.0, 2.0, 0.0], [1.0, 0.0, 0.0, 2.0, 0.0]])
    changed = counts.clone()
    changed[0, 2], changed[0, 4] = 0.0, 40.0
    mean, _ = encoder(SparseBatch.from_dense(counts), measured)
    other, _ = encoder(SparseBatch.from_dense(changed), measured)
    assert torch.equal(mean, other)
    unmasked, _ = encoder(SparseBatch.from_dense(changed), None)
    assert not torch.allclose(mean[0], unmasked[0])  # missing reads differently from zero


# --------------------------------------------------------------------------------------- likelihood
def test_masked_nb_likelihood_is_the_scipy_sum_over_measured_features() -> None:
    rng = np.random.default_rng(0)
    x = rng.poisson(3.0, size=(4, 6)).astype(np.float32)
    measured = rng.random((4, 6)) < 0.6
    measured[:, 0] = True
    x[~measured] = 0
    log_mu = torch.tensor(rng.normal(1.0, 0.5, size=(4, 6)), dtype=torch.float64)
    log_theta = torch.tensor(rng.normal(1.0, 0.3, size=6), dtype=torch.float64)
    dist = NegativeBinomial(log_mu, log_theta)
    got = masked_log_prob_rows(
        dist, SparseBatch.from_dense(torch.tensor(x, dtype=torch.float64)), torch.tensor(measured)
    )
    mu, theta = log_mu.exp().numpy(), log_theta.exp().numpy()
    oracle = st.nbinom.logpmf(x, theta, theta / (theta + mu))
    np.testing.assert_allclose(got.numpy(), np.where(measured, oracle, 0).sum(1), rtol=1e-10)


def test_renormalised_means_share_the_library_among_measured_features() -> None:
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(3, 5)))
    log_library = torch.log(torch.tensor([100.0, 50.0, 10.0], dtype=torch.float64))
    measured = torch.tensor(rng.random((3, 5)) < 0.6)
    measured[:, 1] = True
    dist = renormalised(
        SoftmaxNegativeBinomial(logits, log_library, torch.zeros(5, dtype=torch.float64)), measured
    )
    mean = dist.mean.numpy()
    np.testing.assert_allclose((mean * measured.numpy()).sum(1), log_library.exp().numpy(), rtol=1e-12)
    proportions = torch.softmax(logits, -1).numpy()
    np.testing.assert_allclose(mean / mean.sum(1, keepdims=True), proportions, rtol=1e-12)


def test_patterns_round_trip_a_matrix() -> None:
    matrix = np.random.default_rng(0).random((50, 9)) < 0.5
    patterns = MeasuredPatterns.from_matrix(matrix)
    assert np.array_equal(patterns.cell_matrix(), matrix)
    assert patterns.table.shape[0] == len({row.tobytes() for row in matrix})


# ------------------------------------------------------------------------------------- use and I/O
def test_impute_and_normalized_expression_cover_unmeasured_features() -> None:
    adata = make_cite()
    model = build(adata)
    model.train(max_epochs=3, batch_size=32, progress_bar=False)
    imputed = model.impute(modality="prot")
    assert imputed.shape == (adata.n_obs, N_PROTEINS) and np.isfinite(imputed.to_numpy()).all()
    assert (imputed[HIDDEN].to_numpy() > 0).all()
    normalized = model.get_normalized_expression(modality="prot", library_size=1e4)
    assert np.isfinite(normalized.to_numpy()).all()


def test_differential_expression_counts_only_cells_that_measured_each_feature() -> None:
    adata = make_cite()
    model = build(adata)
    model.train(max_epochs=2, batch_size=32, progress_bar=False)
    de = model.differential_expression(groupby="cell_type", group1="type0", modality="prot", n_samples=200)
    type0 = adata.obs["cell_type"].to_numpy() == "type0"
    in_b0 = adata.obs["batch"].to_numpy() == "b0"
    for feature in HIDDEN:
        assert de.loc[feature, "n_cells_measured1"] == int((type0 & in_b0).sum())
        assert de.loc[feature, "n_cells_measured2"] == int((~type0 & in_b0).sum())
    assert de.loc["CD0", "n_cells_measured1"] == int(type0.sum())
    measured_counts = adata.obsm["protein"].loc[type0 & in_b0, "CD5"].mean()
    assert de.loc["CD5", "raw_mean1"] == pytest.approx(measured_counts)


def test_save_and_load_keep_the_mask_and_old_saves_still_load(tmp_path) -> None:
    import json

    adata = make_cite()
    model = build(adata)
    model.train(max_epochs=2, batch_size=32, progress_bar=False)
    model.save(tmp_path / "m")
    spec = json.loads((tmp_path / "m" / "model.json").read_text())
    assert spec["format_version"] == 2
    assert spec["registry"]["modalities"][1]["modality"]["measured_key"] == "protein_measured"
    loaded = scamort.Model.load(tmp_path / "m", adata)
    assert np.array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    # A format-1 save (before masks) has no measured_key and still loads.
    plain = build(adata, None)
    plain.save(tmp_path / "old")
    spec = json.loads((tmp_path / "old" / "model.json").read_text())
    spec["format_version"] = 1
    for entry in spec["registry"]["modalities"]:
        entry["modality"].pop("measured_key")
    for entry in spec["init_params"]["modalities"].values():
        entry.pop("measured_key")
    (tmp_path / "old" / "model.json").write_text(json.dumps(spec))
    old = scamort.Model.load(tmp_path / "old", adata)
    assert np.array_equal(old.get_latent_representation(), plain.get_latent_representation())


# ---------------------------------------------------------------------------------------- bad input
def _refused(adata: ad.AnnData, match: str, key: str = "protein_measured") -> None:
    before = adata.copy()
    with pytest.raises(InputError, match=match) as info:
        build(adata, key)
    message = str(info.value)
    assert message.replace("e.g. ", "").count(". ") == 0 and message.endswith("."), message  # one sentence
    assert set(adata.obsm) == set(before.obsm) and adata.obsm["protein"].equals(before.obsm["protein"])


def test_a_feature_measured_in_no_cell_is_refused() -> None:
    adata = make_cite()
    adata.obsm["protein_measured"]["CD2"] = False
    _refused(adata, "measured in no training cell.*'CD2'")


def test_a_mask_of_the_wrong_shape_is_refused() -> None:
    adata = make_cite()
    adata.obsm["bad"] = np.ones((adata.n_obs, N_PROTEINS - 1), dtype=bool)
    _refused(adata, r"shape \(120, 7\)", "bad")


def test_a_mask_of_the_wrong_dtype_is_refused() -> None:
    adata = make_cite()
    adata.obsm["bad"] = np.ones((adata.n_obs, N_PROTEINS), dtype=np.int64)
    _refused(adata, "must be boolean", "bad")
    adata.obsm["protein_measured"] = adata.obsm["protein_measured"].astype(np.float32)
    _refused(adata, "must be boolean")


def test_a_cell_with_nothing_measured_in_a_modality_it_has_is_refused() -> None:
    adata = make_cite()
    adata.obsm["protein_measured"].iloc[4] = False
    _refused(adata, "marks no feature measured in 1 cells.*'cell4'")


def test_a_missing_mask_key_is_refused() -> None:
    _refused(make_cite(), "neither in .obsm", "nowhere")


def test_a_per_batch_table_without_a_group_is_refused() -> None:
    adata = make_cite()
    adata.uns["panels"] = pd.DataFrame(
        True, index=pd.Index(["b0"], name="batch"), columns=adata.obsm["protein"].columns
    )
    _refused(adata, "no row for group 'b1'", "panels")
