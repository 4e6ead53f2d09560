"""Shared helpers for the scamort benchmark scripts.

Data preparation, clustering metrics, timing, peak-memory tracking, environment
information and JSON/table output. Every benchmark runs its tools sequentially in
one process, so that the comparison is made under the same load on the same machine.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import resource
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORM_H5AD = REPO_ROOT / "data" / "worm_neuron_cao2017_4186.h5ad"


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def load_worm_neurons() -> ad.AnnData:
    """Load the worm neuron data set (raw counts, ``obs["label"]``).

    Uses :func:`scamort.datasets.worm_neurons` and falls back to the bundled
    ``data/worm_neuron_cao2017_4186.h5ad`` when scamort cannot be imported.

    Returns
    -------
    anndata.AnnData
        4186 cells by 13488 genes of raw counts.
    """
    try:
        import scamort

        return scamort.datasets.worm_neurons()
    except (ImportError, AttributeError) as err:
        print(f"[bench] scamort.datasets unavailable ({err!r}); reading {WORM_H5AD}")
        return ad.read_h5ad(WORM_H5AD)


def select_hvg_counts(adata: ad.AnnData, n_top_genes: int = 2000, min_cells: int = 3) -> ad.AnnData:
    """Filter rare genes and keep the highly variable ones, on raw counts.

    Genes seen in fewer than ``min_cells`` cells are removed first, because the
    ``seurat_v3`` loess fit can fail on very sparse genes.

    Parameters
    ----------
    adata
        Raw counts in ``X``.
    n_top_genes
        Number of highly variable genes to keep (``flavor="seurat_v3"``).
    min_cells
        Minimum number of cells a gene must be detected in.

    Returns
    -------
    anndata.AnnData
        A new object with the selected genes; ``X`` still holds raw counts.
    """
    import scanpy as sc

    adata = adata.copy()
    sc.pp.filter_genes(adata, min_cells=min_cells)
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=n_top_genes, subset=True)
    return adata


def heldout_split(
    n_cells: int, heldout_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split cell positions into a training part and a held-out part.

    Parameters
    ----------
    n_cells
        Number of cells.
    heldout_fraction
        Fraction of cells held out (rounded to the nearest integer count).
    seed
        Seed of ``numpy.random.default_rng`` whose permutation defines the split.

    Returns
    -------
    tuple of numpy.ndarray
        Sorted training positions and sorted held-out positions.
    """
    perm = np.random.default_rng(seed).permutation(n_cells)
    n_heldout = round(heldout_fraction * n_cells)
    return np.sort(perm[n_heldout:]), np.sort(perm[:n_heldout])


def fresh_copies(adata: ad.AnnData, train_idx: np.ndarray, heldout_idx: np.ndarray) -> tuple:
    """Make independent training, held-out and all-cell copies for one tool.

    Each tool gets its own objects because model set-up may write into ``obs``/``uns``.

    Parameters
    ----------
    adata
        The prepared data.
    train_idx, heldout_idx
        Cell positions from :func:`heldout_split`.

    Returns
    -------
    tuple of anndata.AnnData
        ``(train, heldout, all_cells)``.
    """
    return adata[train_idx].copy(), adata[heldout_idx].copy(), adata.copy()


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------
def warm_up_numba() -> float:
    """Run one throwaway ``sc.pp.neighbors`` call so numba compiles outside any timing.

    Returns
    -------
    float
        Seconds the warm-up took.
    """
    import scanpy as sc

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    dummy = ad.AnnData(np.zeros((300, 2), dtype=np.float32))
    dummy.obsm["X_rep"] = rng.normal(size=(300, 10)).astype(np.float32)
    sc.pp.neighbors(dummy, use_rep="X_rep", random_state=0)
    sc.tl.leiden(dummy, resolution=1.0, random_state=0, flavor="igraph", n_iterations=2)
    return time.perf_counter() - start


def warm_up_torch() -> float:
    """Pay torch's one-time costs outside any timing: its first optimizer imports ``torch._dynamo``
    (about 800 modules, ~1 s here), and its first matmuls start the thread pool.

    Whichever tool trains first in a process would otherwise pay this for both.

    Returns
    -------
    float
        Seconds the warm-up took.
    """
    import torch

    start = time.perf_counter()
    layer = torch.nn.Linear(64, 64)
    optimizer = torch.optim.Adam(layer.parameters())
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.randn(128, 64)).square().mean().backward()
        optimizer.step()
    return time.perf_counter() - start


def neighbour_graph(latent: np.ndarray, seed: int, n_neighbors: int = 15) -> ad.AnnData:
    """A cell-only AnnData holding scanpy's kNN graph of ``latent`` ``(n_cells, n_latent)`` (in
    ``.obsm["X_latent"]``, ``.obsp``), ready for ``sc.tl.leiden``."""
    import scanpy as sc

    graph = ad.AnnData(np.zeros((latent.shape[0], 1), dtype=np.float32))
    graph.obsm["X_latent"] = np.asarray(latent, dtype=np.float32)
    sc.pp.neighbors(graph, n_neighbors=n_neighbors, use_rep="X_latent", random_state=seed)
    return graph


def leiden_scores(
    latent: np.ndarray, labels: Sequence[Any], resolution: float = 1.0, seed: int = 0
) -> dict[str, float]:
    """Cluster a latent space with Leiden and score it against known labels.

    Builds the scanpy kNN graph on ``latent`` (``use_rep``, default 15 neighbours),
    runs Leiden (igraph flavour, 2 iterations, undirected) and compares the clusters
    with ``labels``.

    Parameters
    ----------
    latent
        Array of shape ``(n_cells, n_latent)``.
    labels
        Reference labels, one per cell.
    resolution
        Leiden resolution.
    seed
        ``random_state`` for the neighbour search and Leiden.

    Returns
    -------
    dict
        ``ari``, ``nmi`` and ``n_clusters``.
    """
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    tmp = neighbour_graph(latent, seed)
    sc.tl.leiden(
        tmp,
        resolution=resolution,
        random_state=seed,
        flavor="igraph",
        n_iterations=2,
        directed=False,
    )
    clusters = tmp.obs["leiden"].to_numpy()
    labels = np.asarray(labels).astype(str)
    return {
        "ari": float(adjusted_rand_score(labels, clusters)),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "n_clusters": len(np.unique(clusters)),
    }


# --------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------
@dataclass
class Stopwatch:
    """Wall-clock seconds of a ``with timed() as sw:`` block (``sw.seconds``)."""

    seconds: float = field(default=math.nan)


@contextmanager
def timed() -> Iterator[Stopwatch]:
    """Time a block with :func:`time.perf_counter`.

    Yields
    ------
    Stopwatch
        Its ``seconds`` is set when the block exits.
    """
    watch = Stopwatch()
    start = time.perf_counter()
    try:
        yield watch
    finally:
        watch.seconds = time.perf_counter() - start


def _read_proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set size (Linux ``/proc/self/clear_refs``).

    Returns
    -------
    bool
        Whether the reset worked; if not, :func:`peak_rss_mb` reports the peak since
        the process started.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident set size in MiB since the last :func:`reset_peak_rss`.

    Falls back to ``getrusage`` (peak since process start) where ``/proc`` is missing.

    Returns
    -------
    float
        Peak RSS in MiB.
    """
    kb = _read_proc_status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":  # bytes there
            kb //= 1024
    return kb / 1024.0


def current_rss_mb() -> float:
    """Current resident set size in MiB (``nan`` where ``/proc`` is missing).

    Returns
    -------
    float
        Current RSS in MiB.
    """
    kb = _read_proc_status_kb("VmRSS")
    return math.nan if kb is None else kb / 1024.0


# --------------------------------------------------------------------------------------
# Environment and output
# --------------------------------------------------------------------------------------
def quiet_scvi(seed: int) -> Any:
    """Import scvi-tools (an optional extra), seeded, with its and Lightning's logging and warnings off.

    Parameters
    ----------
    seed
        ``scvi.settings.seed``.

    Returns
    -------
    module
        The ``scvi`` package.
    """
    import scvi

    scvi.settings.seed = seed
    scvi.settings.verbosity = logging.ERROR
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    return scvi


def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    """Installed versions of the given distributions (``None`` when missing).

    Parameters
    ----------
    names
        Distribution names, e.g. ``["torch", "scvi-tools"]``.

    Returns
    -------
    dict
        Name to version string.
    """
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment_info() -> dict[str, Any]:
    """Machine, thread and package information for a results file.

    Returns
    -------
    dict
        Timestamp, platform, CPU count, torch threads and package versions.
    """
    import torch

    return {
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "cuda_available": bool(torch.cuda.is_available()),
        "packages": package_versions(
            [
                "scamort",
                "scvi-tools",
                "torch",
                "lightning",
                "scanpy",
                "anndata",
                "numpy",
                "scikit-learn",
                "leidenalg",
                "igraph",
                "pynndescent",
            ]
        ),
    }


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (numpy scalars converted, NaN/inf as ``null``).

    Parameters
    ----------
    path
        Output file; parent folders are created.
    payload
        The results.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_to_jsonable(payload), indent=2) + "\n")
    return path


def format_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Render a small fixed-width table, one row per tool.

    Parameters
    ----------
    rows
        Row label to a mapping of column name to value.
    columns
        Columns to show, in order.

    Returns
    -------
    str
        The table as text.
    """
    frame = pd.DataFrame({label: {c: row.get(c) for c in columns} for label, row in rows.items()}).T
    with pd.option_context("display.float_format", "{:,.4g}".format, "display.width", 200):
        return frame.to_string()
