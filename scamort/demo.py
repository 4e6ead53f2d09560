"""An end-to-end run on the bundled worm neuron data (``scamort demo``).

Steps: keep genes seen in at least 3 cells, select 2000 highly variable genes on the counts
(``flavor="seurat_v3"``), hold out a seeded 10% of the cells, train a :class:`scamort.Model` on the
rest, embed all cells, cluster (Leiden, resolution 1) and draw a UMAP on the embedding, and write
the results, figures, metrics and the saved model into one folder.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scamort._checks import is_whole_number

if TYPE_CHECKING:
    import os

    from anndata import AnnData

__all__ = ["DEFAULT_EPOCHS", "QUICK_EPOCHS", "DemoResult", "run_demo"]

logger = logging.getLogger(__name__)

#: Epochs for the full demo (about a minute of training on 2 CPU cores).
DEFAULT_EPOCHS = 200
#: Epochs for ``--quick`` (a smoke test: seconds of training, the numbers are not meaningful).
QUICK_EPOCHS = 5
#: Highly variable genes kept.
N_TOP_GENES = 2000
#: Fraction of cells held out from training, to measure the ELBO on unseen cells.
HELDOUT_FRACTION = 0.1
#: Column of the worm data with the published cell type labels.
LABEL_KEY = "label"
#: Key of the scamort embedding in ``.obsm``.
EMBEDDING_KEY = "X_scamort"

METRIC_KEYS = (
    "heldout_elbo_per_cell",
    "ari",
    "nmi",
    "epochs_run",
    "train_seconds",
    "n_cells",
    "n_genes",
)


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` wrote.

    Attributes
    ----------
    out_dir
        The output folder.
    files
        Name of each output (``"adata"``, ``"umap"``, ``"training_curve"``, ``"metrics"``,
        ``"model"``) mapped to its path.
    metrics
        The contents of ``metrics.json``.
    """

    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def run_demo(
    out_dir: str | os.PathLike[str] = "scamort_demo",
    *,
    max_epochs: int | None = None,
    quick: bool = False,
    progress_bar: bool = True,
    seed: int = 0,
) -> DemoResult:
    """Train on the bundled worm data and write embedding, clusters, figures and metrics.

    Parameters
    ----------
    out_dir
        Folder to write into (created if missing; existing demo files are replaced).
    max_epochs
        Training epochs; ``None`` uses :data:`DEFAULT_EPOCHS` (or :data:`QUICK_EPOCHS` when
        ``quick``). Early stopping on the validation ELBO may end training sooner.
    quick
        A fast smoke run: few epochs, no early stopping.
    progress_bar
        Show a progress bar while training.
    seed
        Seed for the held-out split, the model, the neighbour graph, Leiden and UMAP.

    Returns
    -------
    DemoResult
        Paths written and the metrics.
    """
    import scanpy as sc

    import scamort
    from scamort.export import embed

    epochs = max_epochs if max_epochs is not None else (QUICK_EPOCHS if quick else DEFAULT_EPOCHS)
    if not is_whole_number(epochs, 1):
        raise ValueError(f"The number of epochs must be a whole number of at least 1, got {epochs!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    adata = prepare_worm_data()
    train_idx, heldout_idx = heldout_split(adata.n_obs, HELDOUT_FRACTION, seed=seed)
    split = np.full(adata.n_obs, "train", dtype=object)
    split[heldout_idx] = "heldout"
    adata.obs["split"] = pd.Categorical(split, categories=["train", "heldout"])
    adata_train = adata[train_idx].copy()
    adata_heldout = adata[heldout_idx].copy()

    logger.info("Training on %d cells x %d genes for up to %d epochs.", *adata_train.shape, epochs)
    model = scamort.Model(adata_train, seed=seed)
    start = time.perf_counter()
    history = model.train(max_epochs=epochs, early_stopping=not quick, progress_bar=progress_bar)
    train_seconds = time.perf_counter() - start
    heldout_elbo = float(model.get_elbo(adata_heldout))
    logger.info(
        "Trained %d epochs in %.1f s; held-out ELBO per cell %.2f.",
        len(history),
        train_seconds,
        heldout_elbo,
    )

    embed(adata, model, key_added=EMBEDDING_KEY)
    logger.info("Clustering and drawing a UMAP on .obsm[%r].", EMBEDDING_KEY)
    sc.pp.neighbors(adata, use_rep=EMBEDDING_KEY, random_state=seed)
    sc.tl.leiden(adata, resolution=1.0, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
    sc.tl.umap(adata, random_state=seed)

    metrics = {
        "heldout_elbo_per_cell": heldout_elbo,
        **cluster_agreement(adata.obs[LABEL_KEY], adata.obs["leiden"]),
        "epochs_run": len(history),
        "max_epochs": epochs,
        "train_seconds": round(train_seconds, 3),
        "seconds_per_epoch": round(train_seconds / max(len(history), 1), 4),
        "final_train_elbo": _last(history, "train_elbo"),
        "final_validation_elbo": _last(history, "validation_elbo"),
        "n_cells": int(adata.n_obs),
        "n_train_cells": len(train_idx),
        "n_heldout_cells": len(heldout_idx),
        "n_genes": int(adata.n_vars),
        "leiden_resolution": 1.0,
        "n_leiden_clusters": int(adata.obs["leiden"].nunique()),
        "seed": seed,
        "quick": quick,
        "scamort_version": scamort.__version__,
    }
    files = _write_outputs(out, adata, model, history, metrics)
    return DemoResult(out_dir=out, files=files, metrics=metrics)


def prepare_worm_data() -> AnnData:
    """Load the bundled worm neurons and keep the highly variable genes.

    Returns
    -------
    anndata.AnnData
        Raw counts, ``(n_cells, 2000)``, with ``obs["label"]`` as a categorical of strings.
    """
    import scanpy as sc

    import scamort

    logger.info("Loading the bundled worm neuron data and selecting %d genes.", N_TOP_GENES)
    adata = scamort.datasets.worm_neurons()
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.highly_variable_genes(adata, n_top_genes=N_TOP_GENES, flavor="seurat_v3", subset=True)
    adata.obs[LABEL_KEY] = _as_string_categories(adata.obs[LABEL_KEY])
    return adata


def _as_string_categories(values: pd.Series) -> pd.Categorical:
    """String categories, in numeric order when every label is an integer (1, 2, ..., 10)."""
    names = values.astype(str)
    unique = sorted(set(names))
    if all(name.isdigit() for name in unique):
        unique.sort(key=int)
    return pd.Categorical(names, categories=unique)


def heldout_split(n_cells: int, fraction: float, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split cell positions into a training and a held-out set.

    Parameters
    ----------
    n_cells
        Number of cells.
    fraction
        Fraction of the cells to hold out (at least one cell is held out).
    seed
        Seed of the random permutation.

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        Sorted integer positions ``(train, heldout)``.
    """
    n_heldout = max(1, math.ceil(fraction * n_cells))
    order = np.random.default_rng(seed).permutation(n_cells)
    return np.sort(order[n_heldout:]), np.sort(order[:n_heldout])


def cluster_agreement(labels: Any, clusters: Any) -> dict[str, float]:
    """Adjusted Rand index and normalized mutual information of clusters vs known labels.

    Parameters
    ----------
    labels
        Known labels, one per cell.
    clusters
        Cluster assignments, one per cell.

    Returns
    -------
    dict[str, float]
        ``{"ari": ..., "nmi": ...}``.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    truth, found = np.asarray(labels).astype(str), np.asarray(clusters).astype(str)
    return {
        "ari": float(adjusted_rand_score(truth, found)),
        "nmi": float(normalized_mutual_info_score(truth, found)),
    }


def _last(history: Any, column: str) -> float | None:
    """The last finite value of ``history[column]``, or ``None``."""
    if column not in history.columns:
        return None
    values = history[column].dropna()
    return float(values.iloc[-1]) if len(values) else None


def _write_outputs(
    out: Path, adata: AnnData, model: Any, history: Any, metrics: dict[str, Any]
) -> dict[str, Path]:
    """Write the h5ad, figures, metrics and model into ``out``; return the paths."""
    import matplotlib.pyplot as plt

    from scamort import pl

    files = {
        "adata": out / "worm_scamort.h5ad",
        "umap": out / "umap.png",
        "training_curve": out / "training_curve.png",
        "metrics": out / "metrics.json",
        "model": out / "model",
    }
    adata.write_h5ad(files["adata"])
    fig = pl.embedding(adata, "umap", color=[LABEL_KEY, "leiden"], legend_loc="on data")
    fig.savefig(files["umap"], dpi=120, bbox_inches="tight")
    plt.close(fig)
    fig = pl.history(history)
    fig.savefig(files["training_curve"], dpi=120)
    plt.close(fig)
    files["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")
    model.save(files["model"], overwrite=True)
    return files
