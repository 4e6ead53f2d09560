"""scamort.pp.concat_panels and a mosaic design: four batches, each with its own modalities and panel."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scamort
from scamort import InputError
from tests.test_feature_masks import HIDDEN, make_cite

PROTEIN = "protein"


def _batch(adata: ad.AnnData, rows: np.ndarray, genes: bool, proteins: list[str] | None) -> ad.AnnData:
    part = adata[rows]
    x = part.X if genes else sp.csr_matrix((part.n_obs, 0), dtype=np.float32)
    var = part.var[[]] if genes else pd.DataFrame(index=pd.Index([], dtype=str))
    out = ad.AnnData(x.copy(), obs=part.obs[["cell_type"]].copy(), var=var)
    if proteins is not None:
        out.obsm[PROTEIN] = part.obsm[PROTEIN][proteins].copy()
    return out


def mosaic(seed: int = 0) -> tuple[ad.AnnData, ad.AnnData]:
    """Four batches of a synthetic CITE-seq set (and the set itself, the truth): ``full`` (RNA + every
    protein), ``small`` (RNA + all but :data:`HIDDEN`), ``rna`` (RNA only) and ``prot`` (protein only)."""
    adata = make_cite(n_cells=200, seed=seed)
    proteins = list(adata.obsm[PROTEIN].columns)
    groups = np.array(["full", "small", "rna", "prot"])[np.arange(adata.n_obs) % 4]
    parts = {
        "full": _batch(adata, groups == "full", True, proteins),
        "small": _batch(adata, groups == "small", True, [p for p in proteins if p not in HIDDEN]),
        "rna": _batch(adata, groups == "rna", True, None),
        "prot": _batch(adata, groups == "prot", False, proteins),
    }
    return scamort.pp.concat_panels(parts, obsm_keys=[PROTEIN]), adata


MOSAIC_MODALITIES = {
    "rna": scamort.Modality(measured_key="measured", present_key="measured_present"),
    "prot": scamort.Modality(
        obsm_key=PROTEIN, measured_key="protein_measured", present_key="protein_measured_present"
    ),
}


def test_concat_panels_joins_features_and_records_what_each_batch_measured() -> None:
    joined, truth = mosaic()
    assert joined.n_obs == truth.n_obs and joined.n_vars == truth.n_vars
    table = joined.uns["protein_measured"]
    assert table.index.name == "batch" and list(table.index) == ["full", "small", "rna", "prot"]
    assert table.loc["full"].all() and not table.loc["rna"].any()
    assert not table.loc["small", HIDDEN].any() and table.loc["small"].drop(HIDDEN).all()
    genes = joined.uns["measured"]
    assert genes.loc[["full", "small", "rna"]].to_numpy().all() and not genes.loc["prot"].any()
    in_small = joined.obs["batch"].to_numpy() == "small"
    assert (joined.obsm[PROTEIN].loc[in_small, HIDDEN].to_numpy() == 0).all()
    assert (
        joined.obs["protein_measured_present"].to_numpy().tolist() == (joined.obs["batch"] != "rna").tolist()
    )
    measured = ~in_small[:, None] | ~joined.obsm[PROTEIN].columns.isin(HIDDEN)[None, :]
    kept = joined.obs["batch"].isin(["full", "small", "prot"]).to_numpy()
    expected = truth.obsm[PROTEIN].loc[joined.obs_names[kept]].to_numpy() * measured[kept]
    assert np.array_equal(joined.obsm[PROTEIN].to_numpy()[kept], expected)


def test_concat_panels_refuses_bad_input() -> None:
    adata = make_cite(n_cells=20)
    with pytest.raises(InputError, match="not an AnnData"):
        scamort.pp.concat_panels({"a": adata, "b": adata.X})
    array = adata.copy()
    array.obsm[PROTEIN] = array.obsm[PROTEIN].to_numpy()
    with pytest.raises(InputError, match="as a DataFrame"):
        scamort.pp.concat_panels({"a": adata, "b": array}, obsm_keys=[PROTEIN])
    with pytest.raises(InputError, match=r"already has an \.obs column 'batch'"):
        scamort.pp.concat_panels({"a": adata}, obsm_keys=[PROTEIN])


def _hidden_correlations(model: scamort.Model, joined: ad.AnnData, truth: ad.AnnData) -> list[float]:
    """Pearson r of log1p normalized protein vs the truth, per hidden protein, in the small-panel batch."""
    rows = joined.obs["batch"].to_numpy() == "small"
    normalized = model.get_normalized_expression(modality="prot", library_size=1e3)
    predicted = np.log1p(normalized.loc[rows, HIDDEN].to_numpy())
    target = np.log1p(truth.obsm[PROTEIN].loc[joined.obs_names[rows], HIDDEN].to_numpy())
    return [float(np.corrcoef(predicted[:, j], target[:, j])[0, 1]) for j in range(len(HIDDEN))]


def _type_accuracy(model: scamort.Model, joined: ad.AnnData, batch: str) -> float:
    """kNN (5) cell-type accuracy of ``batch``'s cells from the other batches' cells in the embedding."""
    from sklearn.neighbors import KNeighborsClassifier

    latent = model.get_latent_representation()
    labels = joined.obs["cell_type"].astype(str).to_numpy()
    rows = joined.obs["batch"].to_numpy() == batch
    return KNeighborsClassifier(5).fit(latent[~rows], labels[~rows]).score(latent[rows], labels[rows])


def test_a_four_batch_mosaic_trains_and_imputes_every_modality_for_every_cell() -> None:
    joined, _ = mosaic()
    model = scamort.Model(joined, modalities=MOSAIC_MODALITIES, batch_key="batch", seed=0)
    model.train(max_epochs=30, batch_size=50, progress_bar=False)
    history = model.history["validation_elbo"].to_numpy()
    assert history[-1] > history[0]
    batch = joined.obs["batch"].to_numpy()
    protein, rna = model.impute(modality="prot"), model.impute(modality="rna")
    assert protein.shape == (joined.n_obs, joined.obsm[PROTEIN].shape[1])
    assert np.isfinite(protein.to_numpy()).all() and np.isfinite(rna.to_numpy()).all()
    assert (protein.loc[batch == "rna"].to_numpy() > 0).all() and (
        rna.loc[batch == "prot"].to_numpy() > 0
    ).all()
    for paired in ("full", "small"):
        assert _type_accuracy(model, joined, paired) > 0.6  # chance: about 1/3


@pytest.mark.slow
def test_a_mosaic_imputes_the_hidden_panel_and_places_single_modality_batches() -> None:
    joined, truth = mosaic()
    model = scamort.Model(joined, modalities=MOSAIC_MODALITIES, batch_key="batch", seed=0)
    model.train(max_epochs=250, batch_size=50, progress_bar=False)
    r = _hidden_correlations(model, joined, truth)
    assert np.median(r) > 0.5, r
    assert _type_accuracy(model, joined, "rna") > 0.8
