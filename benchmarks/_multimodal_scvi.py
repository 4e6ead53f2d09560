"""The scvi-tools side of ``benchmarks/multimodal.py``: MULTIVI on the unpaired multiome cells and TOTALVI
imputing held-out protein, each fitted and scored as the scamort models are."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from _common import quiet_scvi, timed
from _multimodal_metrics import pearson_summary, score_embedding


def fit_multivi(
    rna: ad.AnnData,
    atac: ad.AnnData,
    obs: pd.DataFrame,
    seed: int,
    max_epochs: int,
    architecture: Mapping[str, int] | None = None,
) -> Any:
    """MULTIVI on the unpaired multiome cells: a missing modality is an all-zero row (its convention).

    ``architecture`` passes ``n_hidden``/``n_latent`` (default: MULTIVI's own, sqrt-sized ones).
    """
    import mudata

    scvi = quiet_scvi(seed)
    groups = obs["group"].to_numpy()
    rna_x = sp.csr_matrix(rna.X.multiply((groups != "atac_only")[:, None]))
    atac_x = sp.csr_matrix(atac.X.multiply((groups != "rna_only")[:, None]))
    mdata = mudata.MuData(
        {
            "rna": ad.AnnData(rna_x, obs=obs.copy(), var=rna.var[[]].copy()),
            "atac": ad.AnnData(atac_x, obs=obs.copy(), var=atac.var[[]].copy()),
        }
    )
    mdata.obs["batch"] = obs["batch"].astype(str).to_numpy()
    scvi.model.MULTIVI.setup_mudata(
        mdata, batch_key="batch", modalities={"rna_layer": "rna", "atac_layer": "atac"}
    )
    model = scvi.model.MULTIVI(mdata, n_genes=rna.n_vars, n_regions=atac.n_vars, **(architecture or {}))
    model.train(max_epochs=max_epochs, enable_progress_bar=False)
    mdata.obs["_indices"] = np.arange(mdata.n_obs)
    return model


def fit_totalvi(
    rna: ad.AnnData, prot: ad.AnnData, heldout: np.ndarray, seed: int, max_epochs: int | None = None
) -> Any:
    """TOTALVI with the held-out cells' protein zeroed and those cells in their own batches.

    TOTALVI models missing protein per batch (a batch whose protein is all zero is masked out of the
    protein likelihood), so each original batch is split into an observed and a held-out batch.
    """
    scvi = quiet_scvi(seed)
    protein = prot.X.toarray()
    protein[heldout] = 0.0
    adata = ad.AnnData(rna.X.copy(), obs=rna.obs.copy(), var=rna.var[[]].copy())
    adata.obsm["protein_expression"] = pd.DataFrame(protein, index=adata.obs_names, columns=prot.var_names)
    batch = adata.obs["batch"].astype(str).to_numpy()
    adata.obs["totalvi_batch"] = np.where(heldout, np.char.add(batch.astype(str), "_heldout"), batch)
    scvi.model.TOTALVI.setup_anndata(
        adata, batch_key="totalvi_batch", protein_expression_obsm_key="protein_expression"
    )
    model = scvi.model.TOTALVI(adata)
    model.train(max_epochs=max_epochs, enable_progress_bar=False)
    return model


def totalvi_protein(model: Any, heldout: np.ndarray, batch: np.ndarray, background: bool) -> np.ndarray:
    """TOTALVI's expected protein counts of the held-out cells, each decoded in its original batch."""
    rows = np.flatnonzero(heldout)
    out = np.zeros((rows.size, len(model.protein_state_registry.column_names)))
    for name in np.unique(batch[rows]):
        chosen = batch[rows] == name
        _, protein = model.get_normalized_expression(
            indices=rows[chosen],
            transform_batch=str(name),
            n_samples=25,
            include_protein_background=background,
            return_mean=True,
        )
        out[chosen] = np.asarray(protein)
    return out


def score_multivi(
    rna: ad.AnnData,
    atac: ad.AnnData,
    obs: pd.DataFrame,
    seed: int,
    max_epochs: int,
    architecture: Mapping[str, int],
) -> dict[str, Any]:
    with timed() as watch:
        model = fit_multivi(rna, atac, obs, seed, max_epochs, architecture)
    scores: dict[str, Any] = {
        "architecture": dict(architecture) or "default",
        "epochs_run": len(model.history["elbo_train"]),
        "train_seconds": watch.seconds,
    }
    scores.update(score_embedding(np.asarray(model.get_latent_representation()), obs, seed))
    return scores


def score_totalvi(
    rna: ad.AnnData, prot: ad.AnnData, heldout: np.ndarray, truth: np.ndarray, seed: int
) -> dict[str, Any]:
    with timed() as watch:
        model = fit_totalvi(rna, prot, heldout, seed)
    batch = rna.obs["batch"].astype(str).to_numpy()
    return {
        "epochs_run": len(model.history["elbo_train"]),
        "train_seconds": watch.seconds,
        "foreground_only": pearson_summary(totalvi_protein(model, heldout, batch, False), truth),
        "with_background": pearson_summary(totalvi_protein(model, heldout, batch, True), truth),
    }
