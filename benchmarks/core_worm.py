"""scamort vs scvi-tools SCVI on the worm neuron data, side by side in one process.

Both tools get the same 2000 highly variable genes (raw counts), the same 90% of cells
to train on and the same seeded 10% of held-out cells, the same architecture (10 latent
dimensions, one hidden layer of 128, negative-binomial likelihood) and batch size, and
are otherwise left at their defaults. They run one after the other, never concurrently.

Run ``python benchmarks/core_worm.py`` (full, 100 epochs) or with ``--quick`` (smoke run).
Results go to ``benchmarks/results/core_worm.json`` (``core_worm_quick.json`` for
``--quick``); see ``benchmarks/README.md`` for the fields.
"""

from __future__ import annotations

import argparse
import os
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from _common import (
    RESULTS_DIR,
    current_rss_mb,
    environment_info,
    format_table,
    fresh_copies,
    heldout_split,
    leiden_scores,
    load_worm_neurons,
    peak_rss_mb,
    reset_peak_rss,
    select_hvg_counts,
    timed,
    warm_up_numba,
    warm_up_torch,
    write_json,
)

TOOLS = ("scamort", "scvi")
SCVI_KL_WARMUP_EPOCHS = 400  # scvi-tools TrainingPlan default n_epochs_kl_warmup
TABLE_COLUMNS = (
    "s_per_epoch",
    "train_cells_per_s",
    "epochs_run",
    "heldout_elbo",
    "heldout_marginal_ll",
    "ari",
    "nmi",
    "final_kl_weight",
    "peak_rss_mb",
)


@dataclass(frozen=True)
class Config:
    """Settings shared by both tools."""

    epochs: int = 100
    n_mc_samples: int = 1000
    n_latent: int = 10
    n_hidden: int = 128
    n_layers: int = 1
    batch_size: int = 128
    likelihood: str = "nb"
    n_top_genes: int = 2000
    min_cells: int = 3
    heldout_fraction: float = 0.1
    seed: int = 0
    leiden_resolution: float = 1.0
    quick: bool = False


@dataclass
class ToolRun:
    """What one tool's adapter hands back for scoring."""

    train_seconds: float
    epochs_run: int
    n_train_cells: int
    heldout_elbo: float
    heldout_marginal_ll: float
    latent: np.ndarray
    extra: dict[str, Any]


# --------------------------------------------------------------------------------------
# Tool adapters
# --------------------------------------------------------------------------------------
def run_scamort(train: ad.AnnData, heldout: ad.AnnData, all_cells: ad.AnnData, cfg: Config) -> ToolRun:
    """Train scamort at its defaults and evaluate it.

    Parameters
    ----------
    train, heldout, all_cells
        This tool's own copies of the training cells, held-out cells and all cells.
    cfg
        Shared settings.

    Returns
    -------
    ToolRun
        Timings, held-out ELBO and marginal LL (per-cell, higher is better), latent of all cells.
    """
    import scamort

    model = scamort.Model(
        train,
        n_latent=cfg.n_latent,
        n_hidden=cfg.n_hidden,
        n_layers=cfg.n_layers,
        likelihood=cfg.likelihood,
        seed=cfg.seed,
    )
    with timed() as watch:
        history = model.train(max_epochs=cfg.epochs, batch_size=cfg.batch_size, progress_bar=False)
    history = pd.DataFrame(history)
    last = history.iloc[-1]
    with timed() as eval_watch:
        elbo = float(model.get_elbo(heldout))
        mll = np.asarray(model.get_marginal_ll(heldout, n_mc_samples=cfg.n_mc_samples, return_mean=False))
        latent = np.asarray(model.get_latent_representation(all_cells))
    return ToolRun(
        train_seconds=watch.seconds,
        epochs_run=len(history),
        n_train_cells=len(model.train_indices),
        heldout_elbo=elbo,
        heldout_marginal_ll=float(mll.mean()),
        latent=latent,
        extra={
            "sum_epoch_seconds_from_history": float(history["seconds"].sum()),
            "final_kl_weight": float(last["kl_weight"]),
            "final_train_elbo": float(last["train_elbo"]),
            "final_validation_elbo": float(last.get("validation_elbo", np.nan)),
            "n_validation_cells": len(model.validation_indices),
            "eval_seconds": eval_watch.seconds,
            "init_params": dict(model.init_params),
        },
    )


def _scvi_history_last(model: Any, key: str) -> float:
    """Last value of an scvi-tools history entry (``nan`` when it was not logged)."""
    frame = model.history.get(key) if model.history else None
    if frame is None or len(frame) == 0:
        return float("nan")
    return float(np.asarray(frame.iloc[-1]).ravel()[0])


def run_scvi(train: ad.AnnData, heldout: ad.AnnData, all_cells: ad.AnnData, cfg: Config) -> ToolRun:
    """Train scvi-tools' SCVI at its defaults and evaluate it.

    scvi-tools 1.4.2 sign conventions (read from ``scvi/model/base/_vaemixin.py``):
    ``get_elbo`` returns ``-compute_elbo(...)``, i.e. the ELBO itself (negative, higher is
    better), and ``get_marginal_ll`` returns the log-likelihood (higher is better). Neither
    is negated here. ``get_marginal_ll(return_mean=True)`` averages per-minibatch means,
    which over-weights the last, smaller minibatch, so the per-cell values are averaged
    here instead. Its training history ``elbo_train`` is a loss (negative ELBO) and is negated.

    Parameters
    ----------
    train, heldout, all_cells
        This tool's own copies of the training cells, held-out cells and all cells.
    cfg
        Shared settings.

    Returns
    -------
    ToolRun
        Timings, held-out ELBO and marginal LL (per-cell, higher is better), latent of all cells.
    """
    import scvi

    scvi.settings.seed = cfg.seed
    scvi.model.SCVI.setup_anndata(train)
    model = scvi.model.SCVI(
        train,
        n_latent=cfg.n_latent,
        n_hidden=cfg.n_hidden,
        n_layers=cfg.n_layers,
        gene_likelihood=cfg.likelihood,
    )
    with timed() as watch:
        model.train(max_epochs=cfg.epochs, batch_size=cfg.batch_size, enable_progress_bar=False)
    epochs_run = len(model.history["elbo_train"])
    with timed() as eval_watch:
        elbo = float(model.get_elbo(heldout))
        mll = model.get_marginal_ll(
            heldout,
            n_mc_samples=cfg.n_mc_samples,
            return_mean=False,
            n_mc_samples_per_pass=min(100, cfg.n_mc_samples),
        )
        latent = np.asarray(model.get_latent_representation(all_cells))
    kl_weight = _scvi_history_last(model, "kl_weight")
    if np.isnan(kl_weight):
        kl_weight = min(1.0, (epochs_run - 1) / SCVI_KL_WARMUP_EPOCHS)
    return ToolRun(
        train_seconds=watch.seconds,
        epochs_run=epochs_run,
        n_train_cells=len(model.train_indices),
        heldout_elbo=elbo,
        heldout_marginal_ll=float(np.asarray(mll).mean()),
        latent=latent,
        extra={
            "final_kl_weight": kl_weight,
            "final_train_elbo": -_scvi_history_last(model, "elbo_train"),
            "final_validation_elbo": -_scvi_history_last(model, "elbo_validation"),
            "n_validation_cells": len(model.validation_indices),
            "eval_seconds": eval_watch.seconds,
            "init_params": {
                k: v
                for k, v in model.init_params_.get("non_kwargs", {}).items()
                if isinstance(v, int | float | str | bool | type(None))
            },
        },
    )


ADAPTERS: dict[str, Callable[[ad.AnnData, ad.AnnData, ad.AnnData, Config], ToolRun]] = {
    "scamort": run_scamort,
    "scvi": run_scvi,
}


# --------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------
def summarise(run: ToolRun, labels: np.ndarray, cfg: Config, peak_mb: float) -> dict[str, Any]:
    """Turn one tool's run into its JSON record (clustering scored here).

    Parameters
    ----------
    run
        The adapter's output.
    labels
        ``obs["label"]`` of all cells, in the order of ``run.latent``.
    cfg
        Shared settings.
    peak_mb
        Peak RSS (MiB) while the tool was set up, trained and evaluated.

    Returns
    -------
    dict
        The per-tool record.
    """
    with timed() as watch:
        scores = leiden_scores(run.latent, labels, cfg.leiden_resolution, cfg.seed)
    epochs = max(run.epochs_run, 1)
    return {
        "s_per_epoch": run.train_seconds / epochs,
        "train_seconds": run.train_seconds,
        "epochs_run": run.epochs_run,
        "n_train_cells": run.n_train_cells,
        "train_cells_per_s": run.n_train_cells * run.epochs_run / run.train_seconds,
        "heldout_elbo": run.heldout_elbo,
        "heldout_marginal_ll": run.heldout_marginal_ll,
        "ari": scores["ari"],
        "nmi": scores["nmi"],
        "n_leiden_clusters": scores["n_clusters"],
        "leiden_seconds": watch.seconds,
        "peak_rss_mb": peak_mb,
        **run.extra,
    }


def run_tool(
    name: str,
    adata: ad.AnnData,
    split: tuple[np.ndarray, np.ndarray],
    cfg: Config,
) -> dict[str, Any]:
    """Run one tool on fresh copies of the data; record a traceback instead of raising.

    Parameters
    ----------
    name
        ``"scamort"`` or ``"scvi"``.
    adata
        The prepared data (all cells).
    split
        Training and held-out cell positions.
    cfg
        Shared settings.

    Returns
    -------
    dict
        The per-tool record, or ``{"error": ..., "traceback": ...}``.
    """
    print(f"[bench] running {name} ...", flush=True)
    train, heldout, all_cells = fresh_copies(adata, *split)
    labels = all_cells.obs["label"].to_numpy()
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"[bench] WARNING: 1-min load average {load_before:.2f}; timings may be off")
    reset_peak_rss()
    rss_before = current_rss_mb()
    try:
        run = ADAPTERS[name](train, heldout, all_cells, cfg)
    except Exception as err:  # a benchmark must still report the other tool
        print(traceback.format_exc(), flush=True)
        return {"error": repr(err), "traceback": traceback.format_exc()}
    record = summarise(run, labels, cfg, peak_rss_mb())
    record["rss_before_mb"] = rss_before
    record["load_avg_1min_before"] = load_before
    record["load_avg_1min_after"] = os.getloadavg()[0]
    print(f"[bench] {name}: {record['s_per_epoch']:.3f} s/epoch", flush=True)
    return record


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ratios and differences between the two tools (empty when either failed).

    Parameters
    ----------
    results
        Per-tool records keyed by tool name.

    Returns
    -------
    dict
        ``speedup_s_per_epoch`` (scvi / scamort, >1 means scamort is faster), the
        throughput ratio, and ELBO / marginal-LL differences (scamort - scvi, nats per cell,
        >0 means scamort fits the held-out cells better), plus ARI/NMI differences.
    """
    a, b = results.get("scamort", {}), results.get("scvi", {})
    if "s_per_epoch" not in a or "s_per_epoch" not in b:
        return {}
    return {
        "speedup_s_per_epoch_scvi_over_scamort": b["s_per_epoch"] / a["s_per_epoch"],
        "throughput_ratio_scamort_over_scvi": a["train_cells_per_s"] / b["train_cells_per_s"],
        "heldout_elbo_diff_scamort_minus_scvi": a["heldout_elbo"] - b["heldout_elbo"],
        "heldout_marginal_ll_diff_scamort_minus_scvi": (a["heldout_marginal_ll"] - b["heldout_marginal_ll"]),
        "ari_diff_scamort_minus_scvi": a["ari"] - b["ari"],
        "nmi_diff_scamort_minus_scvi": a["nmi"] - b["nmi"],
    }


def notes(cfg: Config) -> list[str]:
    """Caveats stored with the results.

    Parameters
    ----------
    cfg
        Shared settings.

    Returns
    -------
    list of str
        Human-readable notes.
    """
    scvi_kl = min(1.0, (cfg.epochs - 1) / SCVI_KL_WARMUP_EPOCHS)
    return [
        "Default vs default: only architecture, likelihood, batch size and max epochs are set.",
        f"SCVI warms its KL weight up linearly over {SCVI_KL_WARMUP_EPOCHS} epochs, so after "
        f"{cfg.epochs} epochs its KL weight is only {scvi_kl:.3g} (0.25 after 100); scamort's "
        "default warm-up reaches 1 (see each tool's final_kl_weight). Both tools' held-out "
        "ELBOs are the full (unweighted) ELBO.",
        "Both tools split their training cells once more into train/validation at their "
        "defaults (train_size 0.9); n_train_cells counts the cells actually trained on.",
        "scamort defaults to early stopping (patience 30) and SCVI does not; epochs_run says "
        "how many epochs each ran.",
        "s_per_epoch is the wall time of the whole train() call divided by epochs_run, "
        "including each tool's set-up and any per-epoch validation it does by default.",
        "Before either tool runs, numba (scanpy's neighbours) and torch (its first optimizer imports "
        "torch._dynamo, ~1 s) are warmed up once, so the tool that runs first does not pay the "
        "process's one-time costs for both.",
        "ELBO and marginal LL are per-cell log-densities in nats (negative, higher is better); "
        "the marginal LL is an importance-sampling estimate with the encoder as proposal and "
        f"{cfg.n_mc_samples} samples per cell for both tools.",
        "Clustering: sc.pp.neighbors(use_rep, 15 neighbours, random_state 0) on the latent mean "
        "of all cells, Leiden (igraph flavour, resolution 1, 2 iterations), scored against "
        "obs['label'].",
        "The tools run sequentially in one process; peak_rss_mb is reset before each tool "
        "(Linux /proc/self/clear_refs) and includes the shared data already in memory.",
        "load_avg_1min_before/after is the machine's 1-minute load average around each tool; "
        "values well above 0 mean something else was competing for the CPU.",
    ]


def prepare_data(cfg: Config) -> tuple[ad.AnnData, tuple[np.ndarray, np.ndarray]]:
    """Load the worm data, select genes and draw the held-out split.

    Parameters
    ----------
    cfg
        Shared settings.

    Returns
    -------
    tuple
        The prepared AnnData and ``(train_positions, heldout_positions)``.
    """
    adata = select_hvg_counts(load_worm_neurons(), cfg.n_top_genes, cfg.min_cells)
    split = heldout_split(adata.n_obs, cfg.heldout_fraction, cfg.seed)
    return adata, split


def parse_args(argv: list[str] | None = None) -> tuple[Config, Path, tuple[str, ...]]:
    """Parse the command line.

    Parameters
    ----------
    argv
        Arguments (``sys.argv[1:]`` when ``None``).

    Returns
    -------
    tuple
        The config, the output path and the tools to run.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="max epochs (default 100)")
    parser.add_argument("--n-mc-samples", type=int, default=None, help="marginal-LL samples (default 1000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 epochs, 20 marginal-LL samples")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="output JSON path")
    args = parser.parse_args(argv)
    epochs = args.epochs if args.epochs is not None else (3 if args.quick else 100)
    n_mc = args.n_mc_samples if args.n_mc_samples is not None else (20 if args.quick else 1000)
    cfg = Config(epochs=epochs, n_mc_samples=n_mc, seed=args.seed, quick=args.quick)
    default_name = "core_worm_quick.json" if args.quick else "core_worm.json"
    out = args.out if args.out is not None else RESULTS_DIR / default_name
    return cfg, out, tuple(args.tools)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a table and write the JSON.

    Parameters
    ----------
    argv
        Command-line arguments.

    Returns
    -------
    dict
        The results written to disk.
    """
    cfg, out, tools = parse_args(argv)
    adata, split = prepare_data(cfg)
    print(f"[bench] data {adata.n_obs} x {adata.n_vars}; warming up numba ...", flush=True)
    numba_seconds = warm_up_numba()
    torch_seconds = warm_up_torch()
    results = {name: run_tool(name, adata, split, cfg) for name in tools}
    payload = {
        "benchmark": "core_worm",
        "config": asdict(cfg),
        "data": {
            "dataset": "worm_neuron_cao2017_4186",
            "n_cells": adata.n_obs,
            "n_genes": adata.n_vars,
            "n_train_cells_given": len(split[0]),
            "n_heldout_cells": len(split[1]),
            "gene_selection": "filter_genes(min_cells=3), then seurat_v3 HVG on counts",
            "split": "numpy default_rng(seed).permutation, first 10% held out",
        },
        "environment": environment_info(),
        "numba_warmup_seconds": numba_seconds,
        "torch_warmup_seconds": torch_seconds,
        "results": results,
        "comparison": compare(results),
        "notes": notes(cfg),
    }
    write_json(out, payload)
    print(format_table(results, TABLE_COLUMNS))
    for key, value in payload["comparison"].items():
        print(f"{key}: {value:.4g}")
    print(f"[bench] wrote {out}")
    return payload


if __name__ == "__main__":
    main()
