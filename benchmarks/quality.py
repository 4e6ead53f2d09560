"""RNA model quality: scamort vs scvi-tools SCVI under two protocols, side by side in one process.

For each data set, likelihood and seed, the same seeded 10% of cells is held out and both tools
train on the other 90% with the same architecture (10 latent dimensions, one hidden layer of 128),
under each protocol:

- ``matched``: 100 epochs on all training cells, no early stopping, for both tools
  (scamort ``train(max_epochs=100, train_size=1.0, early_stopping=False)``, SCVI
  ``train(max_epochs=100, train_size=1.0)``; SCVI does not stop early by default);
- ``defaults``: each tool's ``train()`` with no arguments.

Scored on the held-out cells: per-cell ELBO (``get_elbo``) and importance-sampled marginal LL
(``get_marginal_ll``, per-cell values averaged here, the same number of samples for both), and,
where the data have labels, Leiden ARI / NMI of the latent mean of all cells. Both tools'
marginal-LL estimators use the encoder's q(z|x) as the proposal, the observed library size (no
library term), ``logsumexp_k(log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log K`` per cell.

Data sets: ``worm`` (4186 C. elegans neurons, 2000 seurat_v3 HVGs after dropping genes seen in
fewer than 3 cells, ``obs["label"]``) and ``mouse_brain`` (10k E18 mouse brain cells x the first
1000 genes, the one cell without counts dropped; no labels).

Run ``python benchmarks/quality.py`` for the whole grid, ``--quick`` for a smoke run; parts with
``--datasets/--likelihoods/--protocols/--seeds``. The JSON (``benchmarks/results/quality.json`` by
default, rewritten after every run, so an interrupted grid keeps its finished rows) and a
Markdown table next to it hold per-seed rows and means.
"""

from __future__ import annotations

import argparse
import json
import os
import time
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
    environment_info,
    heldout_split,
    leiden_scores,
    load_worm_neurons,
    select_hvg_counts,
    timed,
    warm_up_numba,
    warm_up_torch,
    write_json,
)

TOOLS = ("scamort", "scvi")
DATASETS = ("worm", "mouse_brain")
LIKELIHOODS = ("nb", "zinb")
PROTOCOLS = ("matched", "defaults")
# The shared data folder beside the checkout (``../shared/data``), as on the project's machines.
MOUSE_BRAIN_H5AD = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "mouse_brain_10k_x_1000genes.h5ad"
)
METRICS = ("heldout_elbo", "heldout_marginal_ll", "ari", "nmi", "train_seconds", "epochs_run")


@dataclass(frozen=True)
class Settings:
    """What one run of the grid uses."""

    matched_epochs: int = 100
    n_mc_samples: int = 100
    n_latent: int = 10
    n_hidden: int = 128
    n_layers: int = 1
    heldout_fraction: float = 0.1
    leiden_resolution: float = 1.0
    quick: bool = False


def load_dataset(name: str, mouse_brain_path: Path) -> ad.AnnData:
    """The prepared counts of data set ``name`` (see the module docstring)."""
    import scanpy as sc

    if name == "worm":
        return select_hvg_counts(load_worm_neurons(), 2000, 3)
    adata = ad.read_h5ad(mouse_brain_path)
    sc.pp.filter_cells(adata, min_counts=1)
    return adata


def _train_kwargs(tool: str, protocol: str, settings: Settings) -> dict[str, Any]:
    if protocol == "defaults":
        return {}
    if tool == "scamort":
        return {"max_epochs": settings.matched_epochs, "train_size": 1.0, "early_stopping": False}
    return {"max_epochs": settings.matched_epochs, "train_size": 1.0}


def run_scamort(
    train: ad.AnnData, heldout: ad.AnnData, all_cells: ad.AnnData, likelihood: str, kwargs: dict, s: Settings
) -> dict[str, Any]:
    """Train and score scamort; returns the metrics without clustering and the latent."""
    import scamort

    model = scamort.Model(
        train,
        n_latent=s.n_latent,
        n_hidden=s.n_hidden,
        n_layers=s.n_layers,
        likelihood=likelihood,
        seed=int(train.uns["_seed"]),
    )
    with timed() as watch:
        history = model.train(progress_bar=False, **kwargs)
    last = history.iloc[-1]
    with timed() as eval_watch:
        elbo = float(model.get_elbo(heldout))
        mll = np.asarray(model.get_marginal_ll(heldout, n_mc_samples=s.n_mc_samples, return_mean=False))
        latent = np.asarray(model.get_latent_representation(all_cells))
    return {
        "train_seconds": watch.seconds,
        "epochs_run": len(history),
        "n_train_cells": len(model.train_indices),
        "heldout_elbo": elbo,
        "heldout_marginal_ll": float(mll.mean()),
        "train_elbo": float(model.get_elbo(train, indices=model.train_indices)),
        "final_kl_weight": float(last["kl_weight"]),
        "eval_seconds": eval_watch.seconds,
        "_latent": latent,
    }


def run_scvi(
    train: ad.AnnData, heldout: ad.AnnData, all_cells: ad.AnnData, likelihood: str, kwargs: dict, s: Settings
) -> dict[str, Any]:
    """Train and score scvi-tools' SCVI (its ``get_elbo`` is the ELBO, higher is better)."""
    import scvi

    scvi.settings.seed = int(train.uns["_seed"])
    scvi.model.SCVI.setup_anndata(train)
    model = scvi.model.SCVI(
        train, n_latent=s.n_latent, n_hidden=s.n_hidden, n_layers=s.n_layers, gene_likelihood=likelihood
    )
    with timed() as watch:
        model.train(enable_progress_bar=False, **kwargs)
    epochs_run = len(model.history["elbo_train"])
    with timed() as eval_watch:
        elbo = float(model.get_elbo(heldout))
        mll = model.get_marginal_ll(
            heldout,
            n_mc_samples=s.n_mc_samples,
            return_mean=False,
            n_mc_samples_per_pass=min(100, s.n_mc_samples),
        )
        latent = np.asarray(model.get_latent_representation(all_cells))
    kl = model.history.get("kl_weight")
    return {
        "train_seconds": watch.seconds,
        "epochs_run": epochs_run,
        "n_train_cells": len(model.train_indices),
        "heldout_elbo": elbo,
        "heldout_marginal_ll": float(np.asarray(mll).mean()),
        "train_elbo": float(model.get_elbo(train, indices=model.train_indices)),
        "final_kl_weight": float(np.asarray(kl.iloc[-1]).ravel()[0]) if kl is not None else float("nan"),
        "eval_seconds": eval_watch.seconds,
        "_latent": latent,
    }


ADAPTERS: dict[str, Callable[..., dict[str, Any]]] = {"scamort": run_scamort, "scvi": run_scvi}


def run_one(
    tool: str, adata: ad.AnnData, seed: int, likelihood: str, protocol: str, s: Settings
) -> dict[str, Any]:
    """One tool, one seed, one protocol, on fresh copies of the data; a traceback instead of raising."""
    train_idx, heldout_idx = heldout_split(adata.n_obs, s.heldout_fraction, seed)
    train, heldout, all_cells = adata[train_idx].copy(), adata[heldout_idx].copy(), adata.copy()
    train.uns["_seed"] = seed
    kwargs = _train_kwargs(tool, protocol, s)
    if s.quick:
        kwargs = {**kwargs, "max_epochs": 3}
    load = os.getloadavg()[0]
    try:
        record = ADAPTERS[tool](train, heldout, all_cells, likelihood, kwargs, s)
    except Exception as err:  # the other runs must still be reported
        print(traceback.format_exc(), flush=True)
        return {"error": repr(err), "traceback": traceback.format_exc()}
    latent = record.pop("_latent")
    if "label" in all_cells.obs:
        scores = leiden_scores(latent, all_cells.obs["label"].to_numpy(), s.leiden_resolution, seed)
        record.update(ari=scores["ari"], nmi=scores["nmi"], n_leiden_clusters=scores["n_clusters"])
    record["train_cells_per_s"] = record["n_train_cells"] * record["epochs_run"] / record["train_seconds"]
    record["train_kwargs"] = kwargs
    record["load_avg_1min_before"] = load
    return record


def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (data set, likelihood, protocol, tool) means over seeds, and scamort minus SCVI over the
    seeds both tools finished."""
    frame = pd.DataFrame([r for r in runs if "error" not in r])
    if frame.empty:
        return []
    keys = ["dataset", "likelihood", "protocol", "tool"]
    present = [m for m in METRICS if m in frame]
    means = frame.groupby(keys)[present].mean()
    counts = frame.groupby(keys)["seed"].nunique()
    out = []
    for key, row in means.iterrows():
        out.append({**dict(zip(keys, key, strict=True)), "n_seeds": int(counts[key]), **row.to_dict()})
    # scamort - SCVI over the seeds both tools finished (paired)
    both = frame.groupby(["dataset", "likelihood", "protocol", "seed"])["tool"].transform("nunique") == 2
    means = frame[both].groupby(keys)[present].mean()
    for (dataset, likelihood, protocol), group in means.groupby(level=[0, 1, 2]):
        tools = group.index.get_level_values("tool")
        if {"scamort", "scvi"} <= set(tools):
            a = group.xs("scamort", level="tool").iloc[0]
            b = group.xs("scvi", level="tool").iloc[0]
            out.append(
                {
                    "dataset": dataset,
                    "likelihood": likelihood,
                    "protocol": protocol,
                    "tool": "scamort - scvi",
                    **{m: a[m] - b[m] for m in present if m not in ("epochs_run",)},
                    "train_seconds_ratio_scamort_over_scvi": a["train_seconds"] / b["train_seconds"],
                }
            )
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def markdown(runs: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    """Per-seed rows, then means (and scamort - SCVI), as Markdown tables."""
    columns = ["dataset", "likelihood", "protocol", "seed", "tool", *METRICS, "final_kl_weight"]
    lines = ["## Per seed", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for run in runs:
        if "error" in run:
            lines.append(
                f"| {run['dataset']} | {run['likelihood']} | {run['protocol']} | {run['seed']} | "
                f"{run['tool']} | error: {run['error']} |"
            )
            continue
        lines.append("| " + " | ".join(_fmt(run.get(c)) for c in columns) + " |")
    columns = ["dataset", "likelihood", "protocol", "tool", "n_seeds", *METRICS]
    lines += ["", "## Means over seeds", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in summary]
    return "\n".join(lines) + "\n"


def write_results(out: Path, payload: dict[str, Any]) -> None:
    """Rewrite the JSON and its Markdown table (called after every run)."""
    payload["summary"] = summary_rows(payload["runs"])
    payload["updated_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(out, payload)
    out.with_suffix(".md").write_text(markdown(payload["runs"], payload["summary"]))


def merge(paths: list[Path], out: Path) -> dict[str, Any]:
    """One results file holding the runs of ``paths`` (their other fields from the first, each part's
    grid and environment under ``parts``)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    payload = {k: v for k, v in parts[0].items() if k not in ("runs", "summary")}
    payload["parts"] = [
        {"file": str(p), **{k: part.get(k) for k in ("grid", "environment", "updated_utc")}}
        for p, part in zip(paths, parts, strict=True)
    ]
    payload["data"] = {k: v for part in parts for k, v in part.get("data", {}).items()}
    payload["runs"] = [run for part in parts for run in part["runs"]]
    write_results(out, payload)
    print(out.with_suffix(".md").read_text())
    return payload


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--likelihoods", nargs="+", choices=LIKELIHOODS, default=list(LIKELIHOODS))
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--n-mc-samples", type=int, default=None, help="importance samples (default 100)")
    parser.add_argument("--mouse-brain", type=Path, default=MOUSE_BRAIN_H5AD, help="mouse-brain .h5ad")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 epochs, 10 samples, seed 0")
    parser.add_argument(
        "--matched-epochs", type=int, default=100, help="epochs of the matched protocol (an epoch sweep)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output JSON (default results/quality.json)")
    parser.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: theirs)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, help="results files to combine")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the grid: data set -> likelihood -> protocol -> seed -> tool, writing after every run.

    With ``--merge``, combine the runs of earlier results files (e.g. parts run in parallel) instead.
    """
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out or RESULTS_DIR / "quality.json")
    if args.threads is not None:
        import numba
        import torch

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    n_mc = args.n_mc_samples if args.n_mc_samples is not None else (10 if args.quick else 100)
    settings = Settings(n_mc_samples=n_mc, quick=args.quick, matched_epochs=args.matched_epochs)
    out = args.out or RESULTS_DIR / ("quality_quick.json" if args.quick else "quality.json")
    payload: dict[str, Any] = {
        "benchmark": "quality",
        "settings": asdict(settings),
        "grid": {k: getattr(args, k) for k in ("datasets", "likelihoods", "protocols", "seeds", "tools")},
        "environment": environment_info(),
        "warmup_seconds": {"numba": warm_up_numba(), "torch": warm_up_torch()},
        "runs": [],
    }
    for dataset in args.datasets:
        adata = load_dataset(dataset, args.mouse_brain)
        payload.setdefault("data", {})[dataset] = {"n_cells": adata.n_obs, "n_genes": adata.n_vars}
        for likelihood in args.likelihoods:
            for protocol in args.protocols:
                for seed in args.seeds:
                    for tool in args.tools:
                        print(f"[quality] {dataset} {likelihood} seed {seed} {protocol} {tool}", flush=True)
                        record = run_one(tool, adata, seed, likelihood, protocol, settings)
                        row = {
                            "dataset": dataset,
                            "likelihood": likelihood,
                            "protocol": protocol,
                            "seed": seed,
                            "tool": tool,
                            **record,
                        }
                        payload["runs"].append(row)
                        write_results(out, payload)
                        print(
                            {
                                k: row.get(k)
                                for k in (
                                    "heldout_elbo",
                                    "heldout_marginal_ll",
                                    "ari",
                                    "nmi",
                                    "train_seconds",
                                    "epochs_run",
                                )
                            },
                            flush=True,
                        )
    print(out.with_suffix(".md").read_text())
    return payload


if __name__ == "__main__":
    main()
