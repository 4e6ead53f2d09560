"""Several modalities: explicit masking, unpaired MuData training, per-modality views, imputation, bad input.

Tiny synthetic CITE-seq-like data (RNA counts in ``X``, protein counts in ``obsm["protein"]``), so every
test takes a few seconds.
"""

from __future__ import annotations

import anndata as ad
import mudata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scamort
from scamort import InputError
from tests.conftest import make_counts

N_PROTEINS = 6
MODALITIES = {
    "rna": scamort.Modality(),
    "prot": scamort.Modality(obsm_key="protein"),
}


def make_cite(n_cells: int = 90, seed: int = 0) -> ad.AnnData:
    """RNA counts (``X``) and protein counts (``obsm["protein"]``) driven by the same 3 cell types."""
    adata = make_counts(n_cells=n_cells, n_genes=30, seed=seed)
    rng = np.random.default_rng(seed + 100)
    cell_type = adata.obs["cell_type"].cat.codes.to_numpy()
    means = rng.gamma(1.0, 30.0, size=(3, N_PROTEINS))
    counts = rng.poisson(rng.gamma(4.0, means[cell_type] / 4.0)).astype(np.float32)
    adata.obsm["protein"] = pd.DataFrame(
        counts, index=adata.obs_names, columns=[f"CD{i}" for i in range(N_PROTEINS)]
    )
    return adata


def split_mudata(adata: ad.AnnData, groups: np.ndarray) -> mudata.MuData:
    """Structurally unpaired MuData: ``"rna_only"`` cells absent from ``prot``, ``"prot_only"`` from
    ``rna``; ``.obs`` carries ``batch`` and ``group`` in the MuData's own cell order."""
    rna = ad.AnnData(adata.X.copy(), obs=adata.obs[["batch"]].copy(), var=adata.var[[]].copy())
    prot = ad.AnnData(
        sp.csr_matrix(adata.obsm["protein"].to_numpy()),
        obs=adata.obs[["batch"]].copy(),
        var=pd.DataFrame(index=adata.obsm["protein"].columns),
    )
    mdata = mudata.MuData(
        {"rna": rna[groups != "prot_only"].copy(), "prot": prot[groups != "rna_only"].copy()}
    )
    order = pd.Series(groups, index=adata.obs_names)
    mdata.obs["batch"] = adata.obs.loc[mdata.obs_names, "batch"].to_numpy()
    mdata.obs["group"] = order.loc[mdata.obs_names].to_numpy()
    return mdata


def thirds(n_cells: int, seed: int = 0) -> np.ndarray:
    """Seeded groups: a third paired, a third RNA-only, a third protein-only."""
    order = np.random.default_rng(seed).permutation(n_cells)
    groups = np.full(n_cells, "paired", dtype=object)
    groups[order[: n_cells // 3]] = "rna_only"
    groups[order[n_cells // 3 : 2 * (n_cells // 3)]] = "prot_only"
    return groups.astype(str)


def copy_weights(source: scamort.Model, target: scamort.Model) -> None:
    """Load ``source``'s weights of the modalities ``target`` has into ``target``."""
    state = {
        key: value for key, value in source.module.state_dict().items() if key in target.module.state_dict()
    }
    target.module.load_state_dict(state)


@pytest.fixture(scope="module")
def unpaired() -> tuple[mudata.MuData, scamort.Model]:
    """A model trained briefly on a structurally unpaired MuData (paired, RNA-only, protein-only)."""
    adata = make_cite(n_cells=150, seed=3)
    mdata = split_mudata(adata, thirds(adata.n_obs))
    model = scamort.Model(
        mdata,
        modalities={"rna": scamort.Modality(), "prot": scamort.Modality()},
        batch_key="batch",
        n_latent=4,
        n_hidden=32,
    )
    model.train(max_epochs=30, batch_size=32, progress_bar=False)
    return mdata, model


# ----------------------------------------------------------------------------- masking
def test_joint_posterior_ignores_the_counts_of_a_masked_modality() -> None:
    adata = make_cite()
    adata.obs["has_prot"] = np.arange(adata.n_obs) % 3 != 0
    masked = ~adata.obs["has_prot"].to_numpy()
    spec = {"rna": MODALITIES["rna"], "prot": scamort.Modality(obsm_key="protein", present_key="has_prot")}
    model = scamort.Model(adata, modalities=spec, batch_key="batch", n_latent=4, n_hidden=32)
    model.train(max_epochs=3, progress_bar=False)

    changed = adata.copy()
    protein = changed.obsm["protein"].copy()
    protein.loc[masked] = protein.loc[masked] * 7 + 50
    changed.obsm["protein"] = protein
    np.testing.assert_array_equal(
        model.get_latent_representation(changed), model.get_latent_representation(adata)
    )
    # ...while the same change on measured cells does move them.
    moved = adata.copy()
    protein = moved.obsm["protein"].copy()
    protein.loc[~masked] = protein.loc[~masked] * 7 + 50
    moved.obsm["protein"] = protein
    assert not np.allclose(
        model.get_latent_representation(moved)[~masked], model.get_latent_representation(adata)[~masked]
    )


def test_structural_absence_equals_a_present_key() -> None:
    adata = make_cite()
    groups = thirds(adata.n_obs)
    adata.obs["has_rna"] = groups != "prot_only"
    adata.obs["has_prot"] = groups != "rna_only"
    flagged = scamort.Model(
        adata,
        modalities={
            "rna": scamort.Modality(present_key="has_rna"),
            "prot": scamort.Modality(obsm_key="protein", present_key="has_prot"),
        },
        batch_key="batch",
        n_latent=4,
    )
    mdata = split_mudata(adata, groups)
    structural = scamort.Model(
        mdata,
        modalities={"rna": scamort.Modality(), "prot": scamort.Modality()},
        batch_key="batch",
        n_latent=4,
    )
    copy_weights(flagged, structural)
    rows = adata.obs_names.get_indexer(mdata.obs_names)
    np.testing.assert_allclose(
        structural.get_latent_representation(),
        flagged.get_latent_representation()[rows],
        rtol=1e-6,
        atol=1e-6,
    )


def test_masked_cells_have_the_loss_of_a_model_without_that_modality() -> None:
    adata = make_cite()
    adata.obs["has_prot"] = np.arange(adata.n_obs) % 2 == 0
    masked = np.flatnonzero(~adata.obs["has_prot"].to_numpy())
    spec = {"rna": MODALITIES["rna"], "prot": scamort.Modality(obsm_key="protein", present_key="has_prot")}
    both = scamort.Model(adata, modalities=spec, batch_key="batch", n_latent=4, n_hidden=32)
    both.train(max_epochs=3, progress_bar=False)
    rna_only = scamort.Model(adata, batch_key="batch", n_latent=4, n_hidden=32)
    copy_weights(both, rna_only)
    both.module.eval()
    rna_only.module.eval()

    index = torch.as_tensor(masked)
    terms = {}
    for name, model in (("both", both), ("rna_only", rna_only)):
        batch = model._data.minibatch(index)
        terms[name] = model.module.loss_terms(batch, generator=torch.Generator().manual_seed(5))
    assert torch.equal(terms["both"].reconstruction["prot"], torch.zeros(len(masked)))
    torch.testing.assert_close(terms["both"].reconstruction["rna"], terms["rna_only"].reconstruction["rna"])
    torch.testing.assert_close(terms["both"].kl, terms["rna_only"].kl)
    torch.testing.assert_close(terms["both"].elbo(), terms["rna_only"].elbo())
    # The public per-cell ELBO agrees as well (same sampling seed).
    torch.manual_seed(1)
    elbo_both = both.get_elbo(indices=masked, return_mean=False)
    torch.manual_seed(1)
    elbo_rna = rna_only.get_elbo(indices=masked, return_mean=False)
    np.testing.assert_allclose(elbo_both, elbo_rna, rtol=1e-5)


def test_all_zero_counts_are_measured_not_missing() -> None:
    adata = make_cite()
    protein = adata.obsm["protein"].copy()
    zero_rows = np.arange(5)
    protein.iloc[zero_rows] = 0.0
    adata.obsm["protein"] = protein
    model = scamort.Model(adata, modalities=MODALITIES, batch_key="batch", n_latent=4, n_hidden=32)
    model.train(max_epochs=3, progress_bar=False)

    protein_loglik = model.get_reconstruction_error(indices=zero_rows, return_mean=False)["prot"]
    assert np.all(protein_loglik < 0)  # zeros are data: they are scored, not skipped
    joint = model.get_latent_representation(indices=zero_rows)
    rna_alone = model.get_latent_representation(indices=zero_rows, modality="rna")
    assert not np.allclose(joint, rna_alone)  # the protein expert (of x = 0) is in the product


# ----------------------------------------------------------------------------- unpaired training
def test_training_on_unpaired_mudata_improves_the_validation_elbo(unpaired) -> None:
    mdata, model = unpaired
    validation = model.history["validation_elbo"].to_numpy()
    assert np.isfinite(validation).all()
    assert validation.max() > validation[0]
    # Against the same architecture untrained, on the held-out cells the trained model never saw.
    spec = {"rna": scamort.Modality(), "prot": scamort.Modality()}
    untrained = scamort.Model(mdata, modalities=spec, batch_key="batch", n_latent=4, n_hidden=32)
    held_out = model.validation_indices
    before = untrained.get_elbo(indices=held_out)
    after = model.get_elbo(indices=held_out)
    # Measured: about -79.9 before and -77.0 after 30 epochs of 4 steps (this small synthetic set leaves
    # little to learn, and the RNA decoder's damped output layer learns slowly in so short a run); a
    # one-sample ELBO varies by well under a nat between evaluations.
    assert after > before + 2.0


def test_single_modality_latent_differs_from_the_joint_only_for_paired_cells(unpaired) -> None:
    mdata, model = unpaired
    groups = mdata.obs["group"].to_numpy()
    joint = model.get_latent_representation()
    rna = model.get_latent_representation(modality="rna")
    prot = model.get_latent_representation(modality="prot")
    paired = groups == "paired"
    assert not np.allclose(joint[paired], rna[paired])
    assert not np.allclose(joint[paired], prot[paired])
    np.testing.assert_allclose(joint[groups == "rna_only"], rna[groups == "rna_only"], rtol=1e-6)
    np.testing.assert_allclose(joint[groups == "prot_only"], prot[groups == "prot_only"], rtol=1e-6)


@pytest.mark.parametrize(("modality", "lacking"), [("prot", "rna_only"), ("rna", "prot_only")])
def test_impute_gives_cells_by_features_for_cells_lacking_the_modality(
    unpaired, modality: str, lacking: str
) -> None:
    mdata, model = unpaired
    rows = np.flatnonzero(mdata.obs["group"].to_numpy() == lacking)
    imputed = model.impute(indices=rows, modality=modality)
    assert imputed.shape == (rows.size, mdata.mod[modality].n_vars)
    assert list(imputed.columns) == list(mdata.mod[modality].var_names)
    assert list(imputed.index) == list(mdata.obs_names[rows])
    values = imputed.to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all()
    assert values.std(0).max() > 0  # depends on the cell, not a constant


def test_bernoulli_binarize_trains_and_imputes_probabilities() -> None:
    adata = make_cite()
    adata.layers["atac"] = adata.X.copy()  # counts > 1 included: binarize turns them into 0/1
    adata.obs["has_atac"] = np.arange(adata.n_obs) % 2 == 0
    model = scamort.Model(
        adata,
        modalities={
            "rna": scamort.Modality(),
            "atac": scamort.Modality(
                layer="atac", likelihood="bernoulli", binarize=True, present_key="has_atac"
            ),
        },
        batch_key="batch",
        n_latent=4,
        n_hidden=32,
    )
    model.train(max_epochs=3, progress_bar=False)
    probabilities = model.impute(indices=np.flatnonzero(~adata.obs["has_atac"]), modality="atac").to_numpy()
    assert ((probabilities > 0) & (probabilities < 1)).all()


# ----------------------------------------------------------------------------- bad input
def test_unknown_modality_name_is_refused(unpaired) -> None:
    mdata, _ = unpaired
    with pytest.raises(InputError, match=r"Modality 'adt' is not in the MuData \(it has rna, prot\)"):
        scamort.Model(mdata, modalities={"rna": scamort.Modality(), "adt": scamort.Modality()})


def test_mudata_needs_modalities(unpaired) -> None:
    mdata, _ = unpaired
    with pytest.raises(InputError, match="For a MuData pass modalities="):
        scamort.Model(mdata)


def test_a_column_only_in_the_modalities_obs_is_refused_with_a_recipe_that_works(unpaired) -> None:
    mdata, model = unpaired
    adata = make_cite(n_cells=150, seed=3)
    bare = split_mudata(adata, thirds(adata.n_obs))
    bare.obs = bare.obs.drop(columns=["batch", "group"])
    modalities = {"rna": scamort.Modality(), "prot": scamort.Modality()}
    hint = r"batch_key 'batch' is a column of the modalities' \.obs \(rna, prot\) but not of mdata\.obs"
    with pytest.raises(InputError, match=hint):
        scamort.Model(bare, modalities=modalities, batch_key="batch")
    with pytest.raises(InputError, match=hint):  # a query MuData, too
        model.get_latent_representation(bare)
    bare.mod["rna"].obs["group"] = "g"
    with pytest.raises(InputError, match=r"groupby 'group' is a column of the modalities' \.obs \(rna\)"):
        model.differential_expression(bare, groupby="group", group1="g")
    # The recipe the message gives restores the column every cell had.
    bare.obs["batch"] = pd.concat([m.obs["batch"] for m in bare.mod.values()]).groupby(level=0).first()
    assert bare.obs["batch"].astype(str).tolist() == mdata.obs["batch"].astype(str).tolist()
    restored = model.get_latent_representation(bare)
    np.testing.assert_array_equal(restored, model.get_latent_representation(mdata))


def test_non_integer_protein_counts_are_refused_for_nb() -> None:
    adata = make_cite()
    protein = adata.obsm["protein"].copy()
    protein.iloc[2, 1] = 3.5
    adata.obsm["protein"] = protein
    with pytest.raises(InputError, match=r"obsm\['protein'\] has 1 non-integer entries .*feature 'CD1'"):
        scamort.Model(adata, modalities=MODALITIES)


def test_bernoulli_needs_zero_one_values_unless_binarize() -> None:
    adata = make_cite()
    adata.layers["atac"] = adata.X.copy()
    spec = {"rna": scamort.Modality(), "atac": scamort.Modality(layer="atac", likelihood="bernoulli")}
    with pytest.raises(InputError, match=r"non-binary \(not 0 or 1\) entries .*use binarize=True"):
        scamort.Model(adata, modalities=spec)
    spec["atac"] = scamort.Modality(layer="atac", likelihood="bernoulli", binarize=True)
    scamort.Model(adata, modalities=spec)  # accepted


def test_a_cell_missing_every_modality_is_refused() -> None:
    adata = make_cite()
    adata.obs["has_rna"] = np.arange(adata.n_obs) != 4
    adata.obs["has_prot"] = np.arange(adata.n_obs) > 10
    spec = {
        "rna": scamort.Modality(present_key="has_rna"),
        "prot": scamort.Modality(obsm_key="protein", present_key="has_prot"),
    }
    with pytest.raises(InputError, match=r"1 cells \(e.g. 'cell4'\) are missing every modality"):
        scamort.Model(adata, modalities=spec)


def test_a_cell_missing_every_modality_of_a_mudata_is_refused(unpaired) -> None:
    mdata, _ = unpaired
    mdata = mdata.copy()
    rna_only_cell = mdata.obs_names[mdata.obs["group"].to_numpy() == "rna_only"][0]
    mdata.obs["measured_rna"] = mdata.obs_names != rna_only_cell
    spec = {"rna": scamort.Modality(present_key="measured_rna"), "prot": scamort.Modality()}
    with pytest.raises(InputError, match=f"1 cells \\(e.g. '{rna_only_cell}'\\) are missing every modality"):
        scamort.Model(mdata, modalities=spec)


def test_present_key_must_be_a_boolean_column() -> None:
    adata = make_cite()
    adata.obs["has_prot"] = 1
    spec = {"rna": scamort.Modality(), "prot": scamort.Modality(obsm_key="protein", present_key="has_prot")}
    with pytest.raises(InputError, match="present_key 'has_prot' must be a boolean column"):
        scamort.Model(adata, modalities=spec)


def test_load_refuses_a_renamed_protein(tmp_path) -> None:
    adata = make_cite()
    model = scamort.Model(adata, modalities=MODALITIES, batch_key="batch", n_latent=4, n_hidden=32)
    model.save(tmp_path / "model")
    renamed = adata.copy()
    renamed.obsm["protein"] = adata.obsm["protein"].rename(columns={"CD2": "CD2-renamed"})
    with pytest.raises(
        InputError, match=r"obsm\['protein'\] lacks 1 of the model's 6 features \(e.g. 'CD2'\)"
    ):
        scamort.Model.load(tmp_path / "model", renamed)
    loaded = scamort.Model.load(tmp_path / "model", adata)  # the same names load fine
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), rtol=1e-6
    )
