"""Metrics of ``benchmarks/multimodal.py``, pure functions of embeddings and arrays: kNN label transfer,
own-group neighbour shares, averaged Leiden ARI/NMI, posterior summaries and imputation correlations."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from _common import neighbour_graph
from _multimodal_data import PAIRED
from sklearn.neighbors import NearestNeighbors

K_NEIGHBOURS = 15
LEIDEN_RESOLUTIONS = (0.5, 1.0, 1.5)
LEIDEN_SEEDS = 3


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


def leiden_summary(latent: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """Leiden ARI/NMI vs ``labels`` averaged over seeds ``seed .. seed+2`` × :data:`LEIDEN_RESOLUTIONS`.

    One 15-neighbour graph (scanpy, exact for these sizes), then igraph Leiden (2 iterations,
    undirected) for each seed and resolution; ``n_clusters`` is the mean at resolution 1.
    """
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    work = neighbour_graph(latent, seed, n_neighbors=K_NEIGHBOURS)
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


def neighbour_mean(space: np.ndarray, values: np.ndarray, heldout: np.ndarray) -> np.ndarray:
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
    return neighbour_mean(work.obsm["X_pca"], prot.X.toarray(), heldout)
