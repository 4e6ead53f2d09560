"""Multimodal scamort: unpaired integration and cross-modal imputation, side by side with scvi-tools.

Three parts, all in one process, one after the other (never two torch processes at once):

``cite``
    BMMC CITE-seq (600 cells, 41 cell types, 2 batches, 1000 genes + 134 ADT). A seeded random third
    of the cells loses its protein and another third its RNA, as a *structurally* unpaired MuData
    (a cell absent from ``mdata.mod[name]`` lacks that modality). For the joint embedding (the
    posterior mean, ``get_latent_representation()``'s default): kNN (k=15) label transfer from paired
    cells to each unpaired group, the paired cells' leave-one-out kNN accuracy, each group's fraction
    of its 15 neighbours from its own group (1/3 = perfectly mixed) and Leiden ARI/NMI vs
    ``cell_type``. Side by side: the same model without the alignment term and without adversarial
    mixing, the model on the fully paired data and an RNA-only model on all cells' RNA (scored with
    the same group labels).
``multiome``
    BMMC 10x Multiome (500 cells, 21 types, 600 genes + 600 peaks): the same with ATAC instead of
    protein, ATAC modelled as a depth-aware Bernoulli (``"bernoulli_depth"``), a plain Bernoulli (both
    binarised) and a Poisson on fragment counts, ablations as for ``cite``, a paired model with 5
    latent dimensions private to ATAC (``n_private_latent={"atac": 5}``), and (in both parts) unpaired
    and paired models trained on the RNA first (``train(pretrain_modality="rna")``, rows
    ``*_pretrain_rna``); scvi-tools MULTIVI on the
    same unpaired cells
    (missing modalities as all-zero rows, its own convention), with its default sizes and with
    scamort's. Also what a weak expert does to the product (posterior variance, KL to the prior,
    spread of the means), with a plot.
``imputation``
    BMMC CITE-seq with the protein of a seeded 20% of cells held out: impute it from RNA and report the
    per-protein Pearson correlation of ``log1p`` values with the truth (median over proteins), for
    scamort with an NB and with an NB-mixture (``"nbmixture"``) protein likelihood, scvi-tools TOTALVI
    (held-out cells as their own protein-less batches, its documented missing-protein path) and the
    baseline "mean observed protein of the 15 nearest neighbours in RNA PCA space".

Leiden ARI/NMI are averaged over 9 clusterings of each embedding (Leiden seeds ``seed, seed+1,
seed+2`` × resolutions 0.5, 1, 1.5 on one 15-neighbour graph), the same for every model, because one
clustering of a few hundred cells moves by several points with the Leiden seed alone.

Run ``python benchmarks/multimodal.py`` (about 10 minutes on 2 idle CPU cores) or with ``--quick``
(a smoke run, no scvi-tools, -> ``multimodal_quick.json``). ``--sweep`` instead trains the unpaired
scamort models and the imputation model under the settings of :data:`SWEEP_GRID`
(-> ``multimodal_sweep.json``).

JSON fields (``benchmarks/results/multimodal.json``)
----------------------------------------------------
``settings``
    :class:`Settings` of every scamort model (epochs, batch size, lr, n_latent, n_hidden,
    modality_dropout, alignment_weight, mixing_weight, n_private_latent, pretrain_modality, seed);
    a row's ``settings_changed`` lists its departures.
``cite`` / ``multiome``
    ``n_cells``, ``n_features``, ``n_cell_types``, ``group_sizes`` and ``models``: per model
    ``likelihood`` (of the second modality; scamort), ``settings_changed``, ``epochs_run``,
    ``train_seconds``, ``best_validation_elbo`` (scamort), ``paired_loo_accuracy``,
    ``transfer_accuracy`` (per unpaired group), ``gap_to_paired`` (paired minus group accuracy),
    ``own_group_fraction`` (per group) and ``leiden`` (``ari`` and ``nmi``: means over the 9
    clusterings, ``ari_std``/``nmi_std``, ``n_clusters`` at resolution 1, ``n_clusterings``).
    ``multiome`` also has ``weak_expert`` (per unpaired model: ``joint_by_group`` and
    ``paired_cells_single_expert``, each with ``mean_posterior_variance``, ``mean_kl_to_prior``,
    ``mean_norm_of_mean``, ``spread_of_means``) and ``plot`` (the PNG's path).
``imputation``
    ``scamort_nb`` and ``scamort_nbmixture``: ``epochs_run``, ``train_seconds``,
    ``best_validation_elbo``, ``library_correlation`` (Pearson of predicted and true log protein
    library on the held-out cells), and Pearson summaries (``median_pearson``, ``mean_pearson``,
    ``n_features_scored``) of ``impute`` (``impute()``: library predicted by the library-size head),
    ``median_library`` (the decoded proportions × the median measured library, the behaviour before
    the head), ``oracle_library`` (× the true held-out library: a diagnostic upper bound, not an
    imputation) and for the mixture ``impute_foreground_only``. Then ``knn_rna_pca_baseline``,
    ``knn_scamort_latent`` and ``totalvi`` (``foreground_only`` and ``with_background``).
``goals``
    Which acceptance goals of the issue each model meets.
``environment``, ``numba_warmup_seconds``, ``total_seconds``
    Machine and package versions, and timings.
"""

from __future__ import annotations

import argparse
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from _common import RESULTS_DIR, environment_info, quiet_scvi, timed, warm_up_numba, write_json
from sklearn.neighbors import NearestNeighbors

import scamort
from scamort import inference
from scamort.model import DEFAULT_ALIGNMENT_WEIGHT, DEFAULT_MIXING_WEIGHT, DEFAULT_N_PRIVATE_LATENT

K_NEIGHBOURS = 15
PAIRED = "paired"
LEIDEN_RESOLUTIONS = (0.5, 1.0, 1.5)
LEIDEN_SEEDS = 3


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """How each scamort model is built and trained (the package defaults unless changed).

    Attributes
    ----------
    max_epochs, batch_size, lr
        Training length and optimiser (early stopping on the validation ELBO stays on).
    n_latent, n_hidden
        Latent dimension and hidden width.
    modality_dropout
        Probability that a cell's training posterior uses one random measured expert only.
    alignment_weight
        Weight of the symmetric KL between single-modality posteriors of paired cells.
    mixing_weight
        Weight of the encoders' loss for fooling the classifier of measured-modality groups.
    n_private_latent
        Latent dimensions private to each modality.
    pretrain_modality
        ``Model.train(pretrain_modality=...)`` of the models of several modalities (None: none).
    seed
        Seed of the cell split into groups, of the model and of clustering.
    """

    max_epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    n_latent: int = 10
    n_hidden: int = 128
    modality_dropout: float = 0.3
    alignment_weight: float = DEFAULT_ALIGNMENT_WEIGHT
    mixing_weight: float = DEFAULT_MIXING_WEIGHT
    n_private_latent: int | Mapping[str, int] = DEFAULT_N_PRIVATE_LATENT
    pretrain_modality: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class Row:
    """One scamort model of an integration part.

    Attributes
    ----------
    name
        Row name in the JSON.
    second
        The second modality's spec, or None for an RNA-only model.
    paired
        Train on the fully paired cells instead of the unpaired ones.
    change
        :class:`Settings` fields changed for this row.
    """

    name: str
    second: scamort.Modality | None
    paired: bool = False
    change: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def load_cite() -> tuple[ad.AnnData, ad.AnnData]:
    """BMMC CITE-seq as two aligned AnnData: RNA (1000 genes) and protein (134 ADT), raw counts."""
    adata = scamort.datasets.bmmc_cite()
    obs = adata.obs[["cell_type", "batch"]].copy()
    rna = ad.AnnData(sp.csr_matrix(adata.layers["counts"], dtype=np.float32), obs=obs, var=adata.var[[]])
    protein = adata.obsm["protein_expression"]
    prot = ad.AnnData(
        sp.csr_matrix(protein.to_numpy(dtype=np.float32)),
        obs=obs.copy(),
        var=pd.DataFrame(index=[str(c) for c in protein.columns]),
    )
    return rna, prot


def load_multiome() -> tuple[ad.AnnData, ad.AnnData]:
    """BMMC Multiome as two aligned AnnData: RNA (600 genes) and ATAC (600 peaks, fragment counts)."""
    bundled = scamort.datasets.bmmc_multiome()
    rna, atac = bundled.mod["rna"].copy(), bundled.mod["atac"].copy()
    if not (rna.obs_names == atac.obs_names).all():
        raise RuntimeError("The multiome RNA and ATAC files do not list the same cells in order.")
    for part in (rna, atac):
        part.X = sp.csr_matrix(part.X, dtype=np.float32)
        part.obs = part.obs[["cell_type", "batch"]].copy()
    return rna, atac


def assign_groups(n_cells: int, second: str, seed: int) -> np.ndarray:
    """Seeded thirds: ``"paired"``, ``"rna_only"`` (second modality hidden) and ``"<second>_only"``."""
    order = np.random.default_rng(seed).permutation(n_cells)
    third = n_cells // 3
    groups = np.full(n_cells, PAIRED, dtype=object)
    groups[order[:third]] = "rna_only"
    groups[order[third : 2 * third]] = f"{second}_only"
    return groups.astype(str)


def to_mudata(parts: Mapping[str, ad.AnnData], keep: Mapping[str, np.ndarray], obs: pd.DataFrame) -> Any:
    """A MuData holding, for each modality, only the cells where ``keep[name]`` is True.

    ``obs`` (all cells) provides the ``.obs`` columns of the MuData. MuData orders its cells as the
    union of its modalities' cells (not as ``obs``): use :func:`positions` to line results up.
    """
    import mudata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = mudata.MuData({name: part[keep[name]].copy() for name, part in parts.items()})
    for column in obs.columns:
        mdata.obs[column] = obs.loc[mdata.obs_names, column].to_numpy()
    return mdata


def positions(model: scamort.Model, names: pd.Index) -> np.ndarray:
    """Positions of the cells ``names`` within the model's data, in that order."""
    rows = model.adata.obs_names.get_indexer(names)
    if (rows < 0).any():
        raise KeyError("Some cells are not in the model's data.")
    return rows


# --------------------------------------------------------------------------------------
# Metrics (pure functions on arrays)
# --------------------------------------------------------------------------------------
def _vote(neighbour_labels: np.ndarray) -> np.ndarray:
    """Majority label per row of ``(n, k)`` labels; ties go to the label with the nearer neighbour."""
    k = neighbour_labels.shape[1]
    rank_bonus = 1e-3 * (k - np.arange(k)) / k
    out = np.empty(neighbour_labels.shape[0], dtype=neighbour_labels.dtype)
    for row, labels in enumerate(neighbour_labels):
        scores: dict[Any, float] = {}
        for label, bonus in zip(labels, rank_bonus, strict=True):
            scores[label] = scores.get(label, 0.0) + 1.0 + bonus
        out[row] = max(scores, key=scores.__getitem__)
    return out


def transfer_accuracy(
    reference: np.ndarray, reference_labels: np.ndarray, query: np.ndarray, query_labels: np.ndarray
) -> float:
    """kNN (k=15) label transfer accuracy from ``reference`` cells to ``query`` cells."""
    index = NearestNeighbors(n_neighbors=K_NEIGHBOURS).fit(reference)
    _, neighbours = index.kneighbors(query)
    return float(np.mean(_vote(reference_labels[neighbours]) == query_labels))


def leave_one_out_accuracy(latent: np.ndarray, labels: np.ndarray) -> float:
    """kNN (k=15) accuracy of each cell's label predicted from its neighbours, itself excluded."""
    _, neighbours = NearestNeighbors(n_neighbors=K_NEIGHBOURS).fit(latent).kneighbors()
    return float(np.mean(_vote(labels[neighbours]) == labels))


def own_group_fraction(latent: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Per group, the mean fraction of a cell's 15 nearest neighbours (itself excluded) in its group."""
    _, neighbours = NearestNeighbors(n_neighbors=K_NEIGHBOURS).fit(latent).kneighbors()
    same = (groups[neighbours] == groups[:, None]).mean(1)
    return {str(g): float(same[groups == g].mean()) for g in np.unique(groups)}


def integration_metrics(latent: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """All integration scores of one embedding of the cells.

    Parameters
    ----------
    latent
        Embedding, ``(n_cells, n_latent)``.
    labels
        Cell types, ``(n_cells,)``.
    groups
        ``"paired"`` or an unpaired group name per cell, ``(n_cells,)``.
    """
    paired = groups == PAIRED
    out: dict[str, Any] = {"paired_loo_accuracy": leave_one_out_accuracy(latent[paired], labels[paired])}
    transfer = {}
    for group in sorted(set(groups) - {PAIRED}):
        rows = groups == group
        transfer[group] = transfer_accuracy(latent[paired], labels[paired], latent[rows], labels[rows])
    out["transfer_accuracy"] = transfer
    out["gap_to_paired"] = {g: out["paired_loo_accuracy"] - a for g, a in transfer.items()}
    out["own_group_fraction"] = own_group_fraction(latent, groups)
    return out


def posterior_summary(mean: np.ndarray, log_variance: np.ndarray) -> dict[str, float]:
    """How far posteriors ``(n, d)`` are from the prior: variance, KL, and spread of their means."""
    variance = np.exp(log_variance)
    kl = 0.5 * (mean**2 + variance - 1 - log_variance).sum(1)
    return {
        "mean_posterior_variance": float(variance.mean()),
        "mean_kl_to_prior": float(kl.mean()),
        "mean_norm_of_mean": float(np.linalg.norm(mean, axis=1).mean()),
        "spread_of_means": float(mean.var(0).sum()),
    }


def pearson_per_feature(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson correlation per column of ``log1p`` values (NaN where a column is constant)."""
    x = np.log1p(np.asarray(predicted, dtype=np.float64))
    y = np.log1p(np.asarray(truth, dtype=np.float64))
    x = x - x.mean(0)
    y = y - y.mean(0)
    denominator = np.sqrt((x**2).sum(0) * (y**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(0) / denominator


def pearson_summary(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Median (and mean) over features of :func:`pearson_per_feature`."""
    r = pearson_per_feature(predicted, truth)
    return {
        "median_pearson": float(np.nanmedian(r)),
        "mean_pearson": float(np.nanmean(r)),
        "n_features_scored": int(np.isfinite(r).sum()),
    }


# --------------------------------------------------------------------------------------
# scamort
# --------------------------------------------------------------------------------------
def fit_scamort(
    data: Any, modalities: Mapping[str, scamort.Modality], settings: Settings
) -> tuple[scamort.Model, float]:
    """Build and train one scamort model; returns it and its training seconds."""
    extra = (
        {
            "alignment_weight": settings.alignment_weight,
            "mixing_weight": settings.mixing_weight,
            "n_private_latent": settings.n_private_latent,
        }
        if len(modalities) > 1
        else {}
    )
    model = scamort.Model(
        data,
        modalities=dict(modalities),
        batch_key="batch",
        n_latent=settings.n_latent,
        n_hidden=settings.n_hidden,
        modality_dropout=settings.modality_dropout,
        seed=settings.seed,
        **extra,
    )
    with timed() as watch:
        model.train(
            max_epochs=settings.max_epochs,
            batch_size=settings.batch_size,
            lr=settings.lr,
            progress_bar=False,
            pretrain_modality=settings.pretrain_modality if len(modalities) > 1 else None,
        )
    return model, watch.seconds


def training_record(model: scamort.Model, seconds: float) -> dict[str, Any]:
    """Epochs run, seconds and the last validation ELBO of a trained scamort model."""
    history = model.history
    return {
        "epochs_run": len(history),
        "train_seconds": seconds,
        "best_validation_elbo": float(history["validation_elbo"].max()),
    }


def leiden_summary(latent: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """Leiden ARI/NMI vs ``labels`` averaged over seeds ``seed .. seed+2`` × :data:`LEIDEN_RESOLUTIONS`.

    One 15-neighbour graph (scanpy, exact for these sizes), then igraph Leiden (2 iterations,
    undirected) for each seed and resolution; ``n_clusters`` is the mean at resolution 1.
    """
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    work = ad.AnnData(np.zeros((latent.shape[0], 1), dtype=np.float32))
    work.obsm["X_latent"] = np.asarray(latent, dtype=np.float32)
    sc.pp.neighbors(work, n_neighbors=K_NEIGHBOURS, use_rep="X_latent", random_state=seed)
    labels = np.asarray(labels).astype(str)
    ari, nmi, n_clusters = [], [], []
    for offset in range(LEIDEN_SEEDS):
        for resolution in LEIDEN_RESOLUTIONS:
            sc.tl.leiden(
                work,
                resolution=resolution,
                random_state=seed + offset,
                flavor="igraph",
                n_iterations=2,
                directed=False,
                key_added="leiden",
            )
            clusters = work.obs["leiden"].to_numpy()
            ari.append(adjusted_rand_score(labels, clusters))
            nmi.append(normalized_mutual_info_score(labels, clusters))
            if resolution == 1.0:
                n_clusters.append(len(np.unique(clusters)))
    return {
        "ari": float(np.mean(ari)),
        "nmi": float(np.mean(nmi)),
        "ari_std": float(np.std(ari)),
        "nmi_std": float(np.std(nmi)),
        "n_clusters": float(np.mean(n_clusters)),
        "n_clusterings": len(ari),
    }


def score_embedding(latent: np.ndarray, obs: pd.DataFrame, seed: int) -> dict[str, Any]:
    """Integration metrics plus averaged Leiden ARI/NMI of one embedding."""
    labels = obs["cell_type"].astype(str).to_numpy()
    scores = integration_metrics(latent, labels, obs["group"].to_numpy())
    scores["leiden"] = leiden_summary(latent, labels, seed)
    return scores


def posteriors(model: scamort.Model, modality: str | None, cells: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Mean and log-variance ``(n_cells, n_latent)`` of the joint posterior or of one expert (with the
    prior) for ``cells`` (reads the model's encoded cells; the public API returns only the mean)."""
    data = model._data.to(model.device)
    names = None if modality is None else (modality,)
    return inference.latent(model.module, data, positions(model, cells), modalities=names)


def weak_expert_report(model: scamort.Model, obs: pd.DataFrame, second: str) -> dict[str, Any]:
    """Posterior statistics of the joint posterior per group, and of each expert alone on paired cells."""
    groups = obs["group"].to_numpy()
    joint_mean, joint_log_variance = posteriors(model, None, obs.index)
    report: dict[str, Any] = {"joint_by_group": {}}
    for group in np.unique(groups):
        rows = groups == group
        report["joint_by_group"][str(group)] = posterior_summary(joint_mean[rows], joint_log_variance[rows])
    paired = groups == PAIRED
    report["paired_cells_single_expert"] = {}
    for name in ("rna", second):
        mean, log_variance = posteriors(model, name, obs.index)
        report["paired_cells_single_expert"][name] = posterior_summary(mean[paired], log_variance[paired])
    return report


# --------------------------------------------------------------------------------------
# scvi-tools
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------
def run_integration(
    rna: ad.AnnData, other: ad.AnnData, second: str, rows: Sequence[Row], settings: Settings
) -> tuple[dict[str, Any], dict[str, scamort.Model], pd.DataFrame]:
    """Train and score each of ``rows`` on one pair of modalities (unpaired or fully paired cells)."""
    obs = rna.obs[["cell_type", "batch"]].copy()
    obs["group"] = assign_groups(rna.n_obs, second, settings.seed)
    groups = obs["group"].to_numpy()
    parts = {"rna": rna, second: other}
    all_cells = np.ones(rna.n_obs, bool)
    result: dict[str, Any] = {
        "n_cells": rna.n_obs,
        "n_features": {"rna": rna.n_vars, second: other.n_vars},
        "n_cell_types": int(obs["cell_type"].nunique()),
        "group_sizes": {str(g): int((groups == g).sum()) for g in np.unique(groups)},
        "models": {},
    }
    data = {
        "unpaired": to_mudata(parts, {"rna": groups != f"{second}_only", second: groups != "rna_only"}, obs),
        "paired": to_mudata(parts, {"rna": all_cells, second: all_cells}, obs),
        "rna_only": to_mudata({"rna": rna}, {"rna": all_cells}, obs),
    }
    models: dict[str, scamort.Model] = {}
    for row in rows:
        if row.second is None:
            cells, modalities = data["rna_only"], {"rna": scamort.Modality()}
        else:
            cells = data["paired" if row.paired else "unpaired"]
            modalities = {"rna": scamort.Modality(), second: row.second}
        models[row.name], seconds = fit_scamort(cells, modalities, replace(settings, **row.change))
        scores: dict[str, Any] = {
            "likelihood": None if row.second is None else row.second.likelihood,
            "settings_changed": dict(row.change),
            **training_record(models[row.name], seconds),
        }
        latent = models[row.name].get_latent_representation(indices=positions(models[row.name], obs.index))
        scores.update(score_embedding(latent, obs, settings.seed))
        report(row.name, scores)
        result["models"][row.name] = scores
    return result, models, obs


def report(name: str, scores: Mapping[str, Any]) -> None:
    """One progress line per scored model."""
    fields = {
        key: scores[key]
        for key in ("epochs_run", "train_seconds", "paired_loo_accuracy", "transfer_accuracy")
        if key in scores
    }
    fields["own"] = scores.get("own_group_fraction")
    fields["leiden"] = {k: scores["leiden"][k] for k in ("ari", "nmi")} if "leiden" in scores else None
    print(f"[multimodal] {name}: {_rounded(fields)}", flush=True)


def _rounded(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 3)
    return value


def _ablation(settings: Settings) -> dict[str, Any]:
    """The settings change that turns the alignment term off (nothing when it is off already)."""
    return {"alignment_weight": 0.0} if settings.alignment_weight > 0 else {}


def _mixing_ablation(settings: Settings) -> dict[str, Any]:
    """The settings change that turns adversarial mixing off (nothing when it is off already)."""
    return {"mixing_weight": 0.0} if settings.mixing_weight > 0 else {}


#: The rows that first train on the RNA alone (``Model.train(pretrain_modality="rna")``).
PRETRAIN_RNA: Mapping[str, Any] = {"pretrain_modality": "rna"}


def cite_rows(settings: Settings, full: bool) -> list[Row]:
    """Models of part (a): the unpaired model, and with ``full`` its ablation and the baselines."""
    nb = scamort.Modality(likelihood="nb")
    rows = [Row("unpaired_nb", nb)]
    if full:
        if _ablation(settings):
            rows.append(Row("unpaired_nb_no_alignment", nb, change=_ablation(settings)))
        if _mixing_ablation(settings):
            rows.append(Row("unpaired_nb_no_mixing", nb, change=_mixing_ablation(settings)))
        rows += [
            Row("unpaired_nb_pretrain_rna", nb, change=PRETRAIN_RNA),
            Row("paired_nb", nb, paired=True),
            Row("paired_nb_pretrain_rna", nb, paired=True, change=PRETRAIN_RNA),
            Row("rna_only_model", None),
        ]
    return rows


def run_cite(settings: Settings, full: bool = True) -> dict[str, Any]:
    """Part (a): unpaired RNA + protein integration on the BMMC CITE-seq cells."""
    rna, prot = load_cite()
    result, _, _ = run_integration(rna, prot, "prot", cite_rows(settings, full), settings)
    return result


#: ATAC likelihoods compared; the first is the one of the paired and ablation rows and the plot.
ATAC_VARIANTS: dict[str, scamort.Modality] = {
    "bernoulli_depth": scamort.Modality(likelihood="bernoulli_depth", binarize=True),
    "bernoulli": scamort.Modality(likelihood="bernoulli", binarize=True),
    "poisson": scamort.Modality(likelihood="poisson"),
}


def multiome_rows(settings: Settings, full: bool) -> list[Row]:
    """Models of part (b): unpaired per ATAC likelihood; with ``full`` ablation, paired and RNA-only."""
    first, spec = next(iter(ATAC_VARIANTS.items()))
    if not full:
        return [Row(f"unpaired_{first}", spec)]
    rows = [Row(f"unpaired_{name}", variant) for name, variant in ATAC_VARIANTS.items()]
    rows.append(Row(f"unpaired_{first}_pretrain_rna", spec, change=PRETRAIN_RNA))
    if _ablation(settings):
        rows.append(Row(f"unpaired_{first}_no_alignment", spec, change=_ablation(settings)))
    if _mixing_ablation(settings):
        rows.append(Row(f"unpaired_{first}_no_mixing", spec, change=_mixing_ablation(settings)))
    rows += [
        Row(f"paired_{name}", ATAC_VARIANTS[name], paired=True) for name in ("bernoulli_depth", "bernoulli")
    ]
    rows.append(
        Row(f"paired_{first}_private_atac_5", spec, paired=True, change={"n_private_latent": {"atac": 5}})
    )
    rows.append(Row(f"paired_{first}_pretrain_rna", spec, paired=True, change=PRETRAIN_RNA))
    rows.append(Row("rna_only_model", None))
    return rows


#: MULTIVI runs: its own defaults (n_hidden = sqrt(n_regions) = 24, n_latent = sqrt(24) = 4 here) and
#: scamort's sizes.
MULTIVI_ARCHITECTURES: dict[str, dict[str, int]] = {
    "multivi_unpaired_default": {},
    "multivi_unpaired_hidden128_latent10": {"n_hidden": 128, "n_latent": 10},
}


def run_multiome(
    settings: Settings, full: bool, multivi_epochs: int | None, plot_path: Path | None
) -> dict[str, Any]:
    """Part (b): unpaired RNA + ATAC integration on the BMMC Multiome cells, with MULTIVI."""
    rna, atac = load_multiome()
    result, models, obs = run_integration(rna, atac, "atac", multiome_rows(settings, full), settings)
    result["weak_expert"] = {
        name: weak_expert_report(model, obs, "atac")
        for name, model in models.items()
        if name.startswith("unpaired")
    }
    if plot_path is not None:
        first = next(iter(ATAC_VARIANTS))
        plot_weak_expert(models[f"unpaired_{first}"], obs, plot_path)
        repository = RESULTS_DIR.parent.parent
        resolved = plot_path.resolve()
        result["plot"] = str(
            resolved.relative_to(repository) if resolved.is_relative_to(repository) else resolved
        )
    if multivi_epochs is not None:
        for name, architecture in MULTIVI_ARCHITECTURES.items():
            result["models"][name] = _run_tool(
                lambda a=architecture: _score_multivi(rna, atac, obs, settings.seed, multivi_epochs, a)
            )
            report(name, result["models"][name])
    return result


def _score_multivi(
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


def run_imputation(settings: Settings, with_totalvi: bool, heldout_fraction: float = 0.2) -> dict[str, Any]:
    """Part (c): protein of a seeded 20% of cells held out and imputed from RNA.

    For an NB and an NB-mixture protein likelihood: ``impute()`` (decoded protein × the library
    predicted by the protein's library-size head), the decoded protein × the median measured library
    (``median_library``, what ``impute`` did before the head) and × the true held-out library
    (``oracle_library``, a diagnostic upper bound, not an imputation).
    """
    rna, prot = load_cite()
    n = rna.n_obs
    heldout = np.zeros(n, dtype=bool)
    heldout[np.random.default_rng(settings.seed).permutation(n)[: round(heldout_fraction * n)]] = True
    truth = prot.X[heldout].toarray()
    library = np.asarray(prot.X.sum(1)).ravel()
    obs = rna.obs[["cell_type", "batch"]].copy()
    data = to_mudata({"rna": rna, "prot": prot}, {"rna": np.ones(n, bool), "prot": ~heldout}, obs)
    result: dict[str, Any] = {"n_cells": n, "n_heldout": int(heldout.sum()), "n_proteins": prot.n_vars}
    latent = None
    for likelihood in ("nb", "nbmixture"):
        spec = scamort.Modality(likelihood=likelihood)
        model, seconds = fit_scamort(data, {"rna": scamort.Modality(), "prot": spec}, settings)
        rows = positions(model, obs.index[heldout])
        proportions = model.get_normalized_expression(
            indices=rows, modality="prot", library_size=1.0
        ).to_numpy()
        predicted = model.predict_library_size(indices=rows, modality="prot")
        scores: dict[str, Any] = {
            **training_record(model, seconds),
            "library_correlation": float(np.corrcoef(np.log(predicted), np.log(library[heldout]))[0, 1]),
            "impute": pearson_summary(model.impute(indices=rows, modality="prot").to_numpy(), truth),
            "median_library": pearson_summary(proportions * np.median(library[~heldout]), truth),
            "oracle_library": pearson_summary(proportions * library[heldout, None], truth),
        }
        if likelihood == "nbmixture":
            foreground = model.impute(indices=rows, modality="prot", include_background=False)
            scores["impute_foreground_only"] = pearson_summary(foreground.to_numpy(), truth)
        else:
            latent = model.get_latent_representation(indices=positions(model, obs.index))
        print(f"[multimodal] imputation scamort {likelihood}: {_rounded(scores)}", flush=True)
        result[f"scamort_{likelihood}"] = scores
    result["knn_rna_pca_baseline"] = pearson_summary(knn_protein_baseline(rna, prot, heldout), truth)
    result["knn_scamort_latent"] = pearson_summary(_neighbour_mean(latent, prot.X.toarray(), heldout), truth)
    if with_totalvi:
        result["totalvi"] = _run_tool(lambda: _score_totalvi(rna, prot, heldout, truth, settings.seed))
    return result


def _neighbour_mean(space: np.ndarray, values: np.ndarray, heldout: np.ndarray) -> np.ndarray:
    """Mean ``values`` of each held-out cell's 15 nearest measured cells in ``space``."""
    index = NearestNeighbors(n_neighbors=K_NEIGHBOURS).fit(space[~heldout])
    _, neighbours = index.kneighbors(space[heldout])
    return values[~heldout][neighbours].mean(1)


def knn_protein_baseline(rna: ad.AnnData, prot: ad.AnnData, heldout: np.ndarray) -> np.ndarray:
    """Mean observed protein counts of each held-out cell's 15 nearest observed cells in RNA PCA space
    (normalise_total, log1p, 50 components fitted on all cells)."""
    import scanpy as sc

    work = ad.AnnData(rna.X.copy())
    sc.pp.normalize_total(work, target_sum=1e4)
    sc.pp.log1p(work)
    sc.pp.pca(work, n_comps=50, random_state=0)
    return _neighbour_mean(work.obsm["X_pca"], prot.X.toarray(), heldout)


def _score_totalvi(
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


def _run_tool(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one competitor; a failure is recorded in the JSON instead of ending the benchmark."""
    try:
        return run()
    except Exception as err:  # recorded in the JSON, not hidden
        traceback.print_exc()
        return {"error": repr(err)}


# --------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------
def plot_weak_expert(model: scamort.Model, obs: pd.DataFrame, path: Path) -> None:
    """Three panels: KL to the prior per group and expert; posterior variance per latent dimension;
    the joint embedding's first two principal components coloured by group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = obs["group"].to_numpy()
    joint_mean, joint_lv = posteriors(model, None, obs.index)
    experts = {name: posteriors(model, name, obs.index) for name in ("rna", "atac")}
    paired = groups == PAIRED
    order = ["paired", "rna_only", "atac_only"]

    def kl(mean: np.ndarray, log_variance: np.ndarray) -> np.ndarray:
        return 0.5 * (mean**2 + np.exp(log_variance) - 1 - log_variance).sum(1)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    boxes = [kl(joint_mean[groups == g], joint_lv[groups == g]) for g in order]
    boxes += [kl(m[paired], lv[paired]) for m, lv in experts.values()]
    axes[0].boxplot(boxes, showfliers=False)
    axes[0].set_xticks(
        range(1, 6), [f"joint\n{g}" for g in order] + ["RNA expert\npaired", "ATAC expert\npaired"]
    )
    axes[0].set_ylabel("KL(q(z|x) || N(0, I)) per cell")
    axes[0].set_title("How far each posterior moves from the prior")
    for label, (_, lv), rows in (
        ("joint, paired", (joint_mean, joint_lv), paired),
        ("joint, RNA-only cells", (joint_mean, joint_lv), groups == "rna_only"),
        ("joint, ATAC-only cells", (joint_mean, joint_lv), groups == "atac_only"),
        ("ATAC expert, paired cells", experts["atac"], paired),
    ):
        axes[1].plot(np.exp(lv[rows]).mean(0), marker="o", label=label)
    axes[1].set_xlabel("latent dimension")
    axes[1].set_ylabel("mean posterior variance (prior = 1)")
    axes[1].set_ylim(0, 1.05)
    axes[1].legend(fontsize=8)
    axes[1].set_title("A weak expert leaves the posterior near the prior")
    centred = joint_mean - joint_mean.mean(0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ components[:2].T
    for group, colour in zip(order, ("tab:grey", "tab:blue", "tab:red"), strict=True):
        rows = groups == group
        axes[2].scatter(xy[rows, 0], xy[rows, 1], s=8, alpha=0.7, c=colour, label=group)
    axes[2].set_xlabel("PC 1 of the joint latent mean")
    axes[2].set_ylabel("PC 2")
    axes[2].legend(fontsize=8)
    axes[2].set_title("Joint embedding (multiome, ATAC bernoulli)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Goals and sweep
# --------------------------------------------------------------------------------------
def goals(result: Mapping[str, Any]) -> dict[str, Any]:
    """Which of the issue's acceptance goals each scamort model meets (posterior-mean embedding)."""
    out: dict[str, Any] = {}
    cite = result.get("cite", {}).get("models", {})
    for name, scores in cite.items():
        if name.startswith("unpaired"):
            out[f"cite/{name}"] = {
                "both_groups_within_10_points": all(g <= 0.10 for g in scores["gap_to_paired"].values()),
                "no_group_over_half_own": all(f <= 0.5 for f in scores["own_group_fraction"].values()),
            }
    multiome = result.get("multiome", {}).get("models", {})
    multivi = [
        m["transfer_accuracy"]["atac_only"]
        for name, m in multiome.items()
        if name.startswith("multivi") and "transfer_accuracy" in m
    ]
    for name, scores in multiome.items():
        if name.startswith("unpaired"):
            out[f"multiome/{name}"] = {
                "rna_only_within_10_points": scores["gap_to_paired"]["rna_only"] <= 0.10,
                "atac_only_own_group_at_most_0.6": scores["own_group_fraction"]["atac_only"] <= 0.6,
                "atac_only_accuracy_at_least_best_multivi": (
                    scores["transfer_accuracy"]["atac_only"] >= max(multivi) if multivi else None
                ),
            }
    for part, models in (("cite", cite), ("multiome", multiome)):
        if "rna_only_model" in models:
            for name in models:
                if name.startswith("paired"):
                    out[f"{part}/{name}_leiden_ari_nmi_at_least_rna_only"] = _at_least(
                        models[name], models["rna_only_model"]
                    )
    imputation = result.get("imputation", {})
    for name in ("scamort_nb", "scamort_nbmixture"):
        if name in imputation:
            out[f"imputation/{name}_impute_median_pearson_at_least_0.73"] = (
                imputation[name]["impute"]["median_pearson"] >= 0.73
            )
    return out


def _at_least(joint: Mapping[str, Any], rna: Mapping[str, Any]) -> bool:
    return all(joint["leiden"][m] >= rna["leiden"][m] for m in ("ari", "nmi"))


def sweep(base: Settings, grid: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Unpaired CITE, unpaired multiome (first ATAC variant) and imputation models under each setting."""
    rows = []
    for change in grid:
        settings = replace(base, **change)
        print(f"[sweep] {change}", flush=True)
        started = time.perf_counter()
        row: dict[str, Any] = {"settings": asdict(settings)}
        row["cite"] = run_cite(settings, full=False)["models"]["unpaired_nb"]
        rna, atac = load_multiome()
        first = next(iter(ATAC_VARIANTS))
        multiome, _, _ = run_integration(rna, atac, "atac", multiome_rows(settings, False), settings)
        row["multiome"] = multiome["models"][f"unpaired_{first}"]
        row["imputation"] = run_imputation(settings, with_totalvi=False)["scamort_nb"]
        row["seconds"] = time.perf_counter() - started
        print(f"[sweep] {_sweep_line(row)}", flush=True)
        rows.append(row)
    return rows


def _sweep_line(row: Mapping[str, Any]) -> str:
    cite, multiome = row["cite"], row["multiome"]
    return (
        f"cite paired {cite['paired_loo_accuracy']:.3f} transfer {_rounded(cite['transfer_accuracy'])} "
        f"own {_rounded(cite['own_group_fraction'])} | multiome paired "
        f"{multiome['paired_loo_accuracy']:.3f} transfer {_rounded(multiome['transfer_accuracy'])} "
        f"own {_rounded(multiome['own_group_fraction'])} | "
        f"impute {row['imputation']['impute']['median_pearson']:.3f} | {row['seconds']:.0f}s"
    )


SWEEP_GRID: tuple[dict[str, Any], ...] = (
    {"alignment_weight": 0.0},
    {"alignment_weight": 1.0},
    {"alignment_weight": 3.0},
    {"alignment_weight": 1.0, "modality_dropout": 0.6},
    {"alignment_weight": 0.0, "seed": 1},
    {"alignment_weight": 1.0, "seed": 1},
)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 epochs, no competitors")
    parser.add_argument("--sweep", action="store_true", help="scamort settings sweep instead")
    parser.add_argument("--parts", nargs="+", default=["cite", "multiome", "imputation"])
    parser.add_argument("--epochs", type=int, default=Settings.max_epochs)
    parser.add_argument("--modality-dropout", type=float, default=Settings.modality_dropout)
    parser.add_argument("--alignment-weight", type=float, default=Settings.alignment_weight)
    parser.add_argument("--mixing-weight", type=float, default=Settings.mixing_weight)
    parser.add_argument("--n-private-latent", type=int, default=Settings.n_private_latent)
    parser.add_argument("--n-latent", type=int, default=Settings.n_latent)
    parser.add_argument("--pretrain-modality", default=None, help="e.g. rna; default none")
    parser.add_argument("--multivi-epochs", type=int, default=500, help="0 skips MULTIVI")
    parser.add_argument("--no-scvi", action="store_true", help="skip MULTIVI and TOTALVI")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the selected parts and write the JSON."""
    args = parse_args(argv)
    settings = Settings(
        max_epochs=5 if args.quick else args.epochs,
        n_latent=args.n_latent,
        modality_dropout=args.modality_dropout,
        alignment_weight=args.alignment_weight,
        mixing_weight=args.mixing_weight,
        n_private_latent=args.n_private_latent,
        pretrain_modality=args.pretrain_modality,
        seed=args.seed,
    )
    suffix = "_sweep" if args.sweep else ("_quick" if args.quick else "")
    out = args.out or RESULTS_DIR / f"multimodal{suffix}.json"
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "benchmark": "multimodal",
        "settings": asdict(settings),
        "environment": environment_info(),
        "numba_warmup_seconds": warm_up_numba(),
    }
    if args.sweep:
        payload["sweep"] = sweep(settings, SWEEP_GRID)
    else:
        use_scvi = not (args.quick or args.no_scvi)
        multivi_epochs = args.multivi_epochs if use_scvi and args.multivi_epochs > 0 else None
        if "cite" in args.parts:
            payload["cite"] = run_cite(settings)
        if "multiome" in args.parts:
            plot = out.with_name(out.stem + "_weak_expert.png")
            payload["multiome"] = run_multiome(settings, True, multivi_epochs, plot)
        if "imputation" in args.parts:
            payload["imputation"] = run_imputation(settings, with_totalvi=use_scvi)
        payload["goals"] = goals(payload)
    payload["total_seconds"] = time.perf_counter() - started
    write_json(out, payload)
    print(f"wrote {out} in {payload['total_seconds']:.0f}s")
    return payload


if __name__ == "__main__":
    main()
