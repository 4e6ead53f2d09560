"""Speed and scale on CPU: scamort vs scvi-tools' SCVI on 20k cells, a batch-size sweep, and out-of-core
training from a backed ``.h5ad``, a backed ``.h5mu`` (RNA + protein) and a Zarr store at 200k and 1M cells
against the same cells in memory (:mod:`_scale_out_of_core`).

Each case runs in its own fresh subprocess, one after another (never two torch processes at once), so
that its peak resident memory is its own. Data are grown from the bundled worm neurons (2000 HVGs) by
bootstrapping cells with binomial thinning (:mod:`scamort.scale`); the CITE-seq cells from the bundled BMMC
set the same way (:mod:`_scale_stores`).

    python benchmarks/scale_cpu.py                 # everything (about 20-30 minutes on 2 cores)
    python benchmarks/scale_cpu.py --quick         # a smoke run
    python benchmarks/scale_cpu.py --cases h5ad_1000000 zarr_1000000 --merge  # beside the other cases

Writes ``benchmarks/results/scale_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _scale_out_of_core as out_of_core
from _common import (
    environment_info,
    heldout_split,
    load_worm_neurons,
    peak_rss_mb,
    reset_peak_rss,
    select_hvg_counts,
    warm_up_torch,
    write_json,
)

RESULTS = Path(__file__).resolve().parent / "results"
SWEEP = (128, 256, 512, 1024, 2048, 4096)
#: Learning-rate rules of the batch sweep (``Model.train(lr_scaling=...)``).
LR_RULES = ("sqrt", "linear")
#: Alternating scvi/scamort repeats at batch 128.
REPEATS = 2


def _grown(n_cells: int, seed: int = 1):
    from scamort.scale import grow

    return grow(select_hvg_counts(load_worm_neurons()), n_cells, seed=seed)


def _split(adata):
    train, held_out = heldout_split(adata.n_obs, 0.1, seed=0)
    return adata[train].copy(), adata[held_out].copy()


def case_scamort(
    n_cells: int, batch_size: int, epochs: int, max_seconds: float | None, lr_scaling: str = "sqrt"
) -> dict[str, Any]:
    """Train scamort on grown data; held-out ELBO after the epochs (or the time budget)."""
    import scamort

    train, held_out = _split(_grown(n_cells))
    warm_up_torch()
    reset_peak_rss()
    model = scamort.Model(train)
    started = time.perf_counter()
    history = model.train(
        max_epochs=epochs,
        batch_size=batch_size,
        early_stopping=False,
        progress_bar=False,
        max_seconds=max_seconds,
        lr_scaling=lr_scaling,
    )
    seconds = time.perf_counter() - started
    n_train = len(model.train_indices)
    return {
        "tool": "scamort",
        "batch_size": batch_size,
        "lr_scaling": lr_scaling,
        "epochs_run": len(history),
        "train_seconds": seconds,
        # the same definitions as for scvi-tools (whole train() call over epochs), plus the median epoch
        "seconds_per_epoch": seconds / len(history),
        "cells_per_second": n_train * len(history) / seconds,
        "median_epoch_seconds": float(np.median(history["seconds"])),
        "heldout_elbo": model.get_elbo(held_out),
        "peak_rss_mb": peak_rss_mb(),
        "n_cells": n_cells,
    }


def case_scvi(n_cells: int, batch_size: int, epochs: int, max_seconds: float | None) -> dict[str, Any]:
    """Train scvi-tools' SCVI (defaults, same architecture) on the same grown data."""
    import scvi

    train, held_out = _split(_grown(n_cells))
    warm_up_torch()
    reset_peak_rss()
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(train)
    model = scvi.model.SCVI(train, n_latent=10, n_hidden=128, n_layers=1, gene_likelihood="nb")
    extra = {} if max_seconds is None else {"max_time": {"seconds": max_seconds}}
    started = time.perf_counter()
    model.train(max_epochs=epochs, batch_size=batch_size, enable_progress_bar=False, **extra)
    seconds = time.perf_counter() - started
    epochs_run = len(model.history["elbo_train"])
    n_train = round(0.9 * train.n_obs)
    return {
        "tool": "scvi-tools",
        "batch_size": batch_size,
        "epochs_run": epochs_run,
        "train_seconds": seconds,
        "seconds_per_epoch": seconds / epochs_run,
        "cells_per_second": n_train * epochs_run / seconds,
        "heldout_elbo": float(model.get_elbo(held_out)),  # scvi-tools 1.4.2 returns the ELBO itself
        "peak_rss_mb": peak_rss_mb(),
        "n_cells": n_cells,
    }


def _cases(quick: bool, workdir: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    n20k = 4000 if quick else 20_000
    epochs = 2 if quick else 10
    budget = 10.0 if quick else 60.0
    b128 = {"n_cells": n20k, "batch_size": 128, "epochs": epochs, "max_seconds": None}
    # Alternating repeats (scvi, scamort, scvi, scamort): a shared machine's speed drifts over minutes,
    # so each ratio is taken from neighbouring runs.
    cases: dict[str, tuple[str, dict[str, Any]]] = {}
    for repeat in range(REPEATS):
        cases[f"scvi_b128_run{repeat}"] = ("scvi", b128)
        cases[f"scamort_b128_run{repeat}"] = ("scamort", {**b128, "lr_scaling": "sqrt"})
    cases["scvi_budget"] = ("scvi", {**b128, "epochs": 1000, "max_seconds": budget})
    cases["scamort_budget"] = (
        "scamort",
        {**b128, "epochs": 1000, "max_seconds": budget, "lr_scaling": "sqrt"},
    )
    for rule in LR_RULES:
        for batch in SWEEP[:2] if quick else SWEEP:
            cases[f"scamort_{rule}_b{batch}"] = ("scamort", {**b128, "batch_size": batch, "lr_scaling": rule})
    cases.update(out_of_core.cases(quick, workdir))
    return cases


def _run_case(kind: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    functions = {
        "scamort": case_scamort,
        "scvi": case_scvi,
        "store": out_of_core.case_store,
        "interleaved": out_of_core.case_interleaved,
    }
    return functions[kind](**kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, few epochs")
    parser.add_argument("--cases", nargs="*", help="run only these cases")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--kwargs", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="where the grown stores are (kept)")
    parser.add_argument(
        "--merge", action="store_true", help="keep the results file's other cases (the run's own replace)"
    )
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_run_case(args.case, json.loads(args.kwargs))))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scamort_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    cases = _cases(args.quick, workdir)
    if args.cases:
        cases = {k: v for k, v in cases.items() if k in args.cases}
    out_of_core.prepare(cases)
    out = args.out or RESULTS / ("scale_cpu_quick.json" if args.quick else "scale_cpu.json")
    merged = json.loads(out.read_text()) if args.merge and out.exists() else {}
    results: dict[str, Any] = dict(merged.get("cases", {}))
    for name, (kind, kwargs) in cases.items():
        print(f"running {name} ...", flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--case", kind, "--kwargs", json.dumps(kwargs)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            results[name] = {"error": done.stderr[-2000:]}
            print(done.stderr[-2000:], flush=True)
            continue
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {results[name]}", flush=True)
    summary = _summary(results)
    environment = environment_info()
    report = {"environment": merged.get("environment", environment), "cases": results, "summary": summary}
    if merged:  # the environment of this run's cases, beside that of the file's first run
        report["environment_of_merged_cases"] = {"cases": list(cases), **environment}
    write_json(out, report)
    print(json.dumps(summary, indent=1))


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios (per alternating pair and their median) and, per lr rule, the largest batch whose held-out
    ELBO after the fixed epochs is within 0.5% of batch 128's (sqrt rule, the default) or better."""
    summary: dict[str, Any] = {}
    ratios, epoch_ratios, elbos = [], [], []
    for repeat in range(REPEATS):
        ours, theirs = results.get(f"scamort_b128_run{repeat}", {}), results.get(f"scvi_b128_run{repeat}", {})
        if "cells_per_second" in ours and "cells_per_second" in theirs:
            ratios.append(ours["cells_per_second"] / theirs["cells_per_second"])
            epoch_ratios.append(theirs["seconds_per_epoch"] / ours["seconds_per_epoch"])
            elbos.append({"scamort": ours["heldout_elbo"], "scvi": theirs["heldout_elbo"]})
    if ratios:
        summary["throughput_ratio_b128_per_pair"] = ratios
        summary["throughput_ratio_b128"] = float(np.median(ratios))
        summary["seconds_per_epoch_ratio_scvi_over_scamort"] = float(np.median(epoch_ratios))
        summary["heldout_elbo_b128"] = elbos[0]
    reference = results.get("scamort_sqrt_b128", {}).get("heldout_elbo")
    if reference is not None:
        summary["heldout_elbo_reference_b128"] = reference
        for rule in LR_RULES:
            runs = [results.get(f"scamort_{rule}_b{b}", {}) for b in SWEEP]
            within = [r for r in runs if r.get("heldout_elbo", -np.inf) >= reference - 0.005 * abs(reference)]
            if within:
                best = max(within, key=lambda r: r["batch_size"])
                summary[f"largest_batch_within_0.5pct_{rule}"] = best["batch_size"]
                summary[f"cells_per_second_at_that_batch_{rule}"] = best["cells_per_second"]
                summary[f"heldout_elbo_at_that_batch_{rule}"] = best["heldout_elbo"]
    summary["out_of_core"] = out_of_core.summary(results)
    budget = {k: results[k]["heldout_elbo"] for k in ("scamort_budget", "scvi_budget") if k in results}
    if budget:
        summary["heldout_elbo_after_time_budget"] = budget
    return summary


if __name__ == "__main__":
    main()
