"""Reference mapping and label transfer: scamort side by side with scvi-tools 1.4.2 (scArches).

Two designs (``_mapping_data.py``; every random choice fixed there before any result):

- ``bmmc`` (a): bundled BMMC CITE-seq; reference = batch ``s1d1`` (RNA + protein, 311 cells), query =
  batch ``s1d2`` given as RNA only (289 cells), its measured protein hidden. Types seen only in ``s1d2``
  are the query's novel cells.
- ``worm`` (b): bundled worm neurons (2000 seurat_v3 HVGs), a seeded 50/50 reference/query split, type
  ``"2"`` removed from the reference, and a query site effect: binomial thinning with keep probability
  ``p_g * d_c``, ``p_g ~ U(0.35, 1)`` per gene, ``d_c ~ U(0.5, 1)`` per cell.

Tools, each in one process, one after the other (``_mapping_scvi.py``, ``_mapping_scamort.py``):

- ``scanvi``: SCVI -> ``SCANVI.from_scvi_model(unlabeled_category="Unknown")`` 20 epochs ->
  ``prepare_query_anndata`` -> ``load_query_data`` -> query training (``weight_decay=0``) ->
  ``predict(soft=True)``; novelty ``1 - max probability``.
- ``totalvi`` (bmmc only): TOTALVI on the reference, RNA-only query with all-zero protein,
  ``load_query_data``, query training; labels by a 15-neighbour vote in its latent (it has no classifier).
- ``scamort``: ``Model(reference, batch_key=..., labels_key=...)``, ``Model.load_query_data``, query
  ``train()``, ``predict(soft=True)`` and scamort's novelty score; ``scamort_refined`` adds ``refine()``
  of the query cells.

Two protocols, both reported: ``defaults`` (each tool's own: SCVI ``train()``, SCANVI 20 epochs and query
100 epochs as the scArches tutorial does, TOTALVI ``train()`` and query 200 epochs as its tutorial does,
scamort ``train()`` / query ``train()``) and ``matched`` (100 reference epochs in all, SCVI 80 + SCANVI 20
for scArches, and 100 query epochs, for every tool, no early stopping where the tool allows it).

Scored on the query (``_mapping_metrics.py``): accuracy, macro F1 and ECE (15 bins, of the maximum
probability) on query cells of types the reference has; AUROC of the novelty score for the novel cells;
mixing = mean over query cells of the reference share among its 15 nearest neighbours in the joint latent
(reference cells from the reference model, query cells from the query model), over the reference share
of all other cells; ``map_seconds`` = load_query_data + query training (+ refinement) + prediction, the
reference training excluded; for bmmc the median per-protein Pearson r of ``log1p`` imputed vs hidden
measured protein of the query.

Run ``python benchmarks/mapping.py`` (3 seeds; model seed = seed, the data never change), ``--quick``
(1200 worm cells, 5 epochs, one seed, ~1 min). The JSON (``benchmarks/results/mapping.json``, rewritten
after every model) holds ``per_seed`` (seed -> design -> protocol -> tool -> metrics), ``summary`` (mean,
sd over seeds) and ``goals`` (issue 17's acceptance, pass/fail, with the scArches anchor of NOTES.md).
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _mapping_scvi
import numpy as np
from _common import RESULTS_DIR, environment_info, warm_up_torch, write_json
from _mapping_data import REMOVED_TYPE, SITE_SEED, SPLIT_SEED, Design, bmmc_design, worm_design
from _mapping_goals import goals
from _mapping_scvi import Budget, run_scanvi, run_totalvi

SEEDS = (0, 1, 2)
DESIGNS = ("worm", "bmmc")
PROTOCOLS = {"defaults": Budget(None, None), "matched": Budget(100, 100)}
QUICK_BUDGET = Budget(6, 5)
METRICS = ("accuracy", "macro_f1", "ece", "novelty_auroc", "mixing", "map_seconds", "protein_median_r")


Runner = Callable[[Design, Budget, int], dict[str, dict[str, Any]]]


def _single(name: str, run: Callable[[Design, Budget, int], dict[str, Any]]) -> Runner:
    return lambda design, budget, seed: {name: run(design, budget, seed)}


def runners() -> dict[str, Runner]:
    """Runner name -> ``run(design, budget, seed)`` returning tool -> metrics (``scamort`` gives both
    ``scamort`` and ``scamort_refined``); the scamort side when its mapping API exists."""
    out: dict[str, Runner] = {
        "scanvi": _single("scanvi", run_scanvi),
        "totalvi": _single("totalvi", run_totalvi),
    }
    try:
        from _mapping_scamort import run_scamort
    except ImportError as err:
        print(f"[mapping] scamort side unavailable: {err}")
    else:
        out["scamort"] = run_scamort
    return out


def summary(per_seed: dict[str, Any]) -> dict[str, Any]:
    """Mean and standard deviation over seeds: design -> protocol -> tool -> metric."""
    values: dict[tuple[str, str, str, str], list[float]] = {}
    for designs in per_seed.values():
        for design, protocols in designs.items():
            for protocol, tools in protocols.items():
                for tool, result in tools.items():
                    for metric in METRICS:
                        value = result.get(metric)
                        if value is not None:
                            values.setdefault((design, protocol, tool, metric), []).append(float(value))
    out: dict[str, Any] = {}
    for (design, protocol, tool, metric), vals in values.items():
        cell = out.setdefault(design, {}).setdefault(protocol, {}).setdefault(tool, {})
        cell[metric] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every seed, design, protocol and tool; write the JSON after each model."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1200 worm cells, 5 epochs, one seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=DESIGNS)
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--tools", nargs="+", default=None, help="subset of scanvi totalvi scamort")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--reference-cache",
        type=Path,
        default=None,
        help="folder keeping the trained scvi-tools reference models: a later run maps onto them",
    )
    args = parser.parse_args(argv)
    if args.reference_cache is not None:
        _mapping_scvi.REFERENCE_CACHE[:] = [args.reference_cache]
    seeds = args.seeds[:1] if args.quick else args.seeds
    protocols = {"matched": QUICK_BUDGET} if args.quick else {p: PROTOCOLS[p] for p in args.protocols}
    out = args.out or RESULTS_DIR / ("mapping_quick.json" if args.quick else "mapping.json")
    tools = runners()
    if args.tools is not None:
        tools = {name: run for name, run in tools.items() if name in args.tools}
    started = time.perf_counter()
    designs = {
        "worm": lambda: worm_design(1200 if args.quick else None),
        "bmmc": bmmc_design,
    }
    loaded = {name: designs[name]() for name in args.designs}
    payload: dict[str, Any] = {
        "benchmark": "mapping",
        "split_seed": SPLIT_SEED,
        "site_seed": SITE_SEED,
        "removed_type": {"worm": REMOVED_TYPE, "bmmc": None},
        "data": {
            name: {
                "n_reference": d.reference.n_obs,
                "n_query": d.query.n_obs,
                "n_query_known": int(d.known().sum()),
                "n_genes": d.reference.n_vars,
            }
            for name, d in loaded.items()
        },
        "protocols": {
            p: {"reference_epochs": b.reference_epochs, "query_epochs": b.query_epochs}
            for p, b in protocols.items()
        },
        "seeds": seeds,
        "quick": args.quick,
        "environment": environment_info(),
        "torch_warmup_seconds": warm_up_torch(),
        "per_seed": {},
    }
    for seed in seeds:
        for name, design in loaded.items():
            for protocol, budget in protocols.items():
                cell = (
                    payload["per_seed"]
                    .setdefault(str(seed), {})
                    .setdefault(name, {})
                    .setdefault(protocol, {})
                )
                for tool, run in tools.items():
                    if tool == "totalvi" and design.query_protein is None:
                        continue
                    try:
                        cell.update(run(design, budget, seed))
                    except Exception as err:
                        cell[tool] = {"error": repr(err), "traceback": traceback.format_exc()}
                    for done in [t for t in cell if t == tool or t.startswith(tool + "_")]:
                        shown = {k: v for k, v in cell[done].items() if k in METRICS or k == "error"}
                        print(f"[mapping] seed {seed} {name} {protocol} {done}: {shown}", flush=True)
                    payload["summary"] = summary(payload["per_seed"])
                    payload["goals"] = goals(payload["summary"])
                    payload["total_seconds"] = time.perf_counter() - started
                    write_json(out, payload)
    print(f"[mapping] goals: {payload.get('goals')}")
    print(f"wrote {out} in {time.perf_counter() - started:.0f}s")
    return payload


if __name__ == "__main__":
    main()
