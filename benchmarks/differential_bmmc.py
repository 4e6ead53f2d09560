"""Do canonical marker genes come out on top of scamort's differential expression?

On the bundled bone-marrow CITE-seq data (``scamort.datasets.bmmc_cite()``: 600 cells, 1000 genes,
134 ADT, two batches), train ``scamort.Model(batch_key="batch")`` on the RNA and run Bayesian DE
(``mode="change"``, ``delta=0.25``, batch-corrected) one group against all other cells for five
well-known populations. The fine ``cell_type`` labels are merged into coarse populations first (e.g.
all B-cell subtypes into "B cells"), since a marker of B cells is shared by all of them.

For each population the canonical markers were fixed in ``MARKERS`` before looking at any result;
only those present among the 1000 genes are scored. A marker's ``rank`` is its position (1 = best)
among the genes *higher* in the population (``lfc_mean > 0``) in scamort's evidence order
(``proba_de``, then ``|lfc_mean|``); ``rank_all`` is its position in the full table (up and down).
For reference, ``wilcoxon_rank`` is its rank in scanpy's Wilcoxon test on log-normalized counts
(``sc.tl.rank_genes_groups``, same groups), and ``scvi_rank`` its rank among the genes higher in the
population in scvi-tools' own DE (``SCVI`` with its defaults and ``batch_key="batch"``, then
``differential_expression(mode="change", delta=0.25, batch_correction=True)``, sorted by ``proba_de``
as scvi-tools sorts it), when scvi-tools is installed (``pip install -e ".[bench]"``; ``--no-scvi``
skips it). Goal: every available marker in the top 20. For each RNA marker the report also says,
from the observed counts alone (no model), which fine cell types outside the population express it at
least half as highly as the population does: a marker shared with part of "rest" can rank low in a
one-vs-rest test whatever the method.

A second model on RNA + protein (``modalities={"rna": ..., "prot": ...}``) scores canonical surface
markers in the protein modality (``modality="prot"``), which covers populations whose RNA markers are
not among the 1000 genes (CD8A/CD8B are not).

Run ``python benchmarks/differential_bmmc.py`` (full) or ``--quick`` (smoke run, few epochs, no
scvi-tools).
Writes ``benchmarks/results/differential_bmmc.json`` and ``.md`` (``differential_bmmc_quick.*``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from _common import RESULTS_DIR, environment_info, quiet_scvi, write_json

import scamort
from scamort.differential import differential_expression

#: Coarse population -> the fine ``obs["cell_type"]`` labels merged into it.
POPULATIONS: dict[str, tuple[str, ...]] = {
    "CD14+ Mono": ("CD14+ Mono",),
    "B cells": (
        "Naive CD20+ B IGKC+",
        "Naive CD20+ B IGKC-",
        "Transitional B",
        "B1 B IGKC+",
        "B1 B IGKC-",
    ),
    "NK": ("NK", "NK CD158e1+"),
    "CD8+ T": (
        "CD8+ T naive",
        "CD8+ T CD69+ CD45RO+",
        "CD8+ T CD57+ CD45RO+",
        "CD8+ T CD57+ CD45RA+",
        "CD8+ T CD49f+",
        "CD8+ T CD69+ CD45RA+",
        "CD8+ T TIGIT+ CD45RO+",
        "CD8+ T naive CD127+ CD26- CD101-",
        "CD8+ T TIGIT+ CD45RA+",
    ),
    "Erythroid": ("Proerythroblast", "Erythroblast", "Normoblast", "Reticulocyte"),
}

#: Canonical RNA markers per population (textbook lists, fixed before looking at results).
MARKERS: dict[str, tuple[str, ...]] = {
    "CD14+ Mono": ("CD14", "LYZ", "S100A8", "S100A9", "FCN1", "VCAN", "MNDA", "CD36"),
    "B cells": ("MS4A1", "CD79A", "CD79B", "PAX5", "CD19", "BANK1"),
    "NK": ("NKG7", "GNLY", "KLRD1", "PRF1", "KLRF1", "NCAM1"),
    "CD8+ T": ("CD8A", "CD8B"),
    "Erythroid": ("HBB", "HBA1", "HBA2", "GATA1", "ALAS2", "KLF1", "CA1", "AHSP"),
}

#: Canonical surface proteins per population (antibody names of the ADT panel).
PROTEIN_MARKERS: dict[str, tuple[str, ...]] = {
    "CD14+ Mono": ("CD14", "CD33", "CD64"),
    "B cells": ("CD19", "CD20", "CD22", "CD79b"),
    "NK": ("CD56", "CD94", "CD335"),
    "CD8+ T": ("CD8",),
    "Erythroid": ("CD71",),
}

GROUPBY = "population"
TOP = 20
#: Fewest cells a fine cell type needs to be compared in :func:`observed_elsewhere`.
MIN_TYPE_CELLS = 5


def add_populations(adata: ad.AnnData) -> None:
    """Write ``obs[GROUPBY]``: the coarse population of each cell (``"other"`` outside POPULATIONS)."""
    lookup = {fine: coarse for coarse, fines in POPULATIONS.items() for fine in fines}
    missing = sorted(set(lookup) - set(adata.obs["cell_type"].astype(str)))
    if missing:
        raise SystemExit(f"cell types not in the data: {missing}")
    labels = adata.obs["cell_type"].astype(str).map(lambda t: lookup.get(t, "other"))
    adata.obs[GROUPBY] = pd.Categorical(labels, categories=[*POPULATIONS, "other"])


def wilcoxon_ranks(adata: ad.AnnData) -> dict[str, pd.Series]:
    """Rank (1 = best) of every gene per population in scanpy's Wilcoxon test, one vs rest."""
    normalized = ad.AnnData(adata.X.copy(), obs=adata.obs[[GROUPBY]].copy(), var=adata.var[[]].copy())
    sc.pp.normalize_total(normalized, target_sum=1e4)
    sc.pp.log1p(normalized)
    sc.tl.rank_genes_groups(normalized, GROUPBY, groups=list(POPULATIONS), method="wilcoxon")
    out = {}
    for population in POPULATIONS:
        names = sc.get.rank_genes_groups_df(normalized, group=population)["names"].to_list()
        out[population] = pd.Series(np.arange(1, len(names) + 1), index=names)
    return out


def observed_elsewhere(adata: ad.AnnData, population: str, gene: str) -> dict[str, Any]:
    """How the gene's observed counts in the population compare with the fine cell types outside it.

    Model-free: counts per 10k of each cell's library, averaged per group. ``within_twofold`` lists
    the fine ``cell_type`` labels outside the population (with at least ``MIN_TYPE_CELLS`` cells) whose
    mean is at least half the population's (within two-fold of it, or above), highest first, each
    with its cell count, mean and the fraction of its cells with a nonzero count.
    """
    column = adata[:, gene].X
    counts = np.asarray(column.todense() if hasattr(column, "todense") else column).ravel()
    library = np.maximum(np.asarray(adata.X.sum(axis=1)).ravel(), 1.0)
    normalized = 1e4 * counts / library
    inside = (adata.obs[GROUPBY] == population).to_numpy()
    own = float(normalized[inside].mean())
    others = []
    cell_types = adata.obs["cell_type"].astype(str).to_numpy()
    for cell_type in sorted(set(cell_types[~inside])):
        members = ~inside & (cell_types == cell_type)
        mean = float(normalized[members].mean())
        if members.sum() >= MIN_TYPE_CELLS and mean >= own / 2:
            detected = float((counts[members] > 0).mean())
            others.append(
                {"cell_type": cell_type, "n_cells": int(members.sum()), "mean": mean, "detected": detected}
            )
    others.sort(key=lambda other: -other["mean"])
    return {
        "mean": own,
        "detected": float((counts[inside] > 0).mean()),
        "within_twofold": others,
    }


def up_ranks(de: pd.DataFrame) -> pd.Series:
    """Rank (1 = best) of each gene higher in group 1 (``lfc_mean > 0``), in the table's order."""
    up = de[de["lfc_mean"] > 0]
    return pd.Series(np.arange(1, len(up) + 1), index=up.index)


def scvi_ranks(adata: ad.AnnData, args: argparse.Namespace) -> tuple[dict[str, pd.Series], dict[str, Any]]:
    """scvi-tools' DE for every population, as :func:`up_ranks`; and a summary of its model.

    ``SCVI`` with its defaults (``batch_key="batch"``, default epochs), then one-vs-rest
    ``differential_expression`` with the same mode, ``delta`` and batch correction as scamort's.
    """
    scvi = quiet_scvi(args.seed)
    work = ad.AnnData(adata.X.copy(), obs=adata.obs[["batch", GROUPBY]].copy(), var=adata.var[[]].copy())
    scvi.model.SCVI.setup_anndata(work, batch_key="batch")
    model = scvi.model.SCVI(work)
    start = time.perf_counter()
    model.train(max_epochs=args.epochs, enable_progress_bar=False)
    train_seconds = time.perf_counter() - start
    ranks = {}
    for population in POPULATIONS:
        de = model.differential_expression(
            groupby=GROUPBY, group1=population, mode="change", delta=args.delta, batch_correction=True
        )
        ranks[population] = up_ranks(de)
    summary = {
        "model": "scvi.model.SCVI (defaults), batch_key='batch'",
        "train_seconds": train_seconds,
        "epochs_run": len(model.history["elbo_train"]),
    }
    return ranks, summary


def marker_rows(
    de: pd.DataFrame,
    population: str,
    markers: tuple[str, ...],
    reference: pd.Series | None,
    scvi_reference: pd.Series | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """One record per available marker, and the markers absent from the data."""
    up_rank = up_ranks(de)
    all_rank = pd.Series(np.arange(1, len(de) + 1), index=de.index)
    fdr_column = next(c for c in de.columns if c.startswith("is_de_fdr_"))
    rows, absent = [], []
    for marker in markers:
        if marker not in de.index:
            absent.append(marker)
            continue
        row = de.loc[marker]
        rows.append(
            {
                "population": population,
                "marker": marker,
                "rank": int(up_rank[marker]) if marker in up_rank.index else None,
                "rank_all": int(all_rank[marker]),
                "proba_de": float(row["proba_de"]),
                "bayes_factor": float(row["bayes_factor"]),
                "lfc_mean": float(row["lfc_mean"]),
                "lfc_std": float(row["lfc_std"]),
                "is_de_fdr": bool(row[fdr_column]),
                "wilcoxon_rank": None if reference is None else int(reference.get(marker, -1)),
                "scvi_rank": None if scvi_reference is None else _rank_or_none(scvi_reference, marker),
                "in_top": marker in up_rank.index and int(up_rank[marker]) <= TOP,
            }
        )
    return rows, absent


def _rank_or_none(ranks: pd.Series, marker: str) -> int | None:
    """The marker's rank, or ``None`` when it is not higher in the population."""
    return int(ranks[marker]) if marker in ranks.index else None


def run_de(
    model: scamort.Model,
    adata: ad.AnnData,
    markers: dict[str, tuple[str, ...]],
    args: argparse.Namespace,
    **kw,
) -> tuple[list[dict[str, Any]], dict[str, list[str]], dict[str, Any]]:
    """DE one vs rest per population; marker records, absent markers, and per-population summaries."""
    reference = kw.pop("reference", None)
    scvi_reference = kw.pop("scvi_reference", None)
    rows: list[dict[str, Any]] = []
    absent: dict[str, list[str]] = {}
    summary: dict[str, Any] = {}
    for population in POPULATIONS:
        start = time.perf_counter()
        de = differential_expression(
            model, adata, groupby=GROUPBY, group1=population, n_samples=args.n_samples, seed=args.seed, **kw
        )
        seconds = time.perf_counter() - start
        found, missing = marker_rows(
            de,
            population,
            markers[population],
            None if reference is None else reference[population],
            None if scvi_reference is None else scvi_reference[population],
        )
        rows += found
        absent[population] = missing
        up = de[de["lfc_mean"] > 0]
        summary[population] = {
            "n_cells": int((adata.obs[GROUPBY] == population).sum()),
            "de_seconds": round(seconds, 3),
            "n_de_fdr": int(de[next(c for c in de.columns if c.startswith("is_de_fdr_"))].sum()),
            "top_up": up.index[:10].to_list(),
        }
        print(
            f"[bench] {population:<11} {summary[population]['n_cells']:>3} cells, {seconds:.2f} s; top up: "
            f"{', '.join(summary[population]['top_up'])}"
        )
    for row in rows:
        row["top10_elsewhere"] = [
            other
            for other in POPULATIONS
            if other != row["population"] and row["marker"] in summary[other]["top_up"]
        ]
        if kw.get("modality") is None:
            row["observed"] = observed_elsewhere(adata, row["population"], row["marker"])
    return rows, absent, summary


def markdown(payload: dict[str, Any]) -> str:
    """The results as a Markdown report."""
    lines = [
        "# Differential expression on the bundled BMMC CITE-seq data",
        "",
        f"Generated by `benchmarks/differential_bmmc.py{' --quick' if payload['config']['quick'] else ''}` "
        f"({payload['environment']['timestamp_utc']}). One population vs all other cells, "
        f'`mode="change"`, `delta={payload["config"]["delta"]}`, batch-corrected, '
        f"{payload['config']['n_samples']} posterior draws per group. `rank`: position among the genes "
        "higher in the population, in scamort's evidence order (proba_de, then |lfc_mean|); `rank_all`: in "
        "the full table; `wilcoxon`: scanpy's Wilcoxon rank; `scVI`: the rank among the genes higher in the "
        "population in scvi-tools' own DE (SCVI with its defaults, the same mode, delta and batch "
        "correction; '-' when not run, 'not up' when its lfc_mean is not positive). Goal: `rank` <= "
        f"{TOP} for every available marker.",
        "",
    ]
    scvi_part = payload.get("scvi")
    for title, key in (
        ("RNA (model on RNA only)", "rna"),
        ("Protein (joint RNA + protein model)", "protein"),
    ):
        part = payload[key]
        lines += [
            f"## {title}",
            "",
            f"Model: {part['model']}; training {part['train_seconds']:.0f} s (1-min load average "
            f"{part.get('load_avg_1min_before', float('nan')):.1f} before, "
            f"{part.get('load_avg_1min_after', float('nan')):.1f} after; well above the core count means "
            "other work competed for the CPU and the time is not representative).",
            "",
            "| population | marker | rank | rank_all | proba_de | lfc_mean | FDR 5% | wilcoxon | scVI |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in part["markers"]:
            lines.append(
                f"| {row['population']} | {row['marker']} | {row['rank']} | {row['rank_all']} | "
                f"{row['proba_de']:.3f} | {row['lfc_mean']:.2f} | {'yes' if row['is_de_fdr'] else 'no'} | "
                f"{row['wilcoxon_rank'] if row['wilcoxon_rank'] is not None else '-'} | "
                f"{_scvi_cell(row, key == 'rna' and scvi_part is not None)} |"
            )
        lines += ["", f"- Markers in the top {TOP}: {part['n_in_top']} of {len(part['markers'])}."]
        if key == "rna" and scvi_part is not None:
            lines.append(
                f"- scvi-tools' SCVI on the same cells: {scvi_part['n_in_top']} of {len(part['markers'])} "
                f"({scvi_part['epochs_run']} epochs, {scvi_part['train_seconds']:.0f} s)."
            )
        for row in part["markers"]:
            if not row["in_top"]:
                elsewhere = ", ".join(row["top10_elsewhere"]) or "no other population"
                lines.append(
                    f"- Missed: {row['marker']} ({row['population']}, rank {row['rank'] or 'not up'}); "
                    "among the top 10 "
                    f"genes higher in: {elsewhere}."
                )
                if "observed" in row:
                    lines.append(f"  {_observed_sentence(row)}")
        lines.append("")
        absent = {p: m for p, m in part["absent_markers"].items() if m}
        if absent:
            lines += ["Canonical markers not among the measured features (not scored):", ""]
            lines += [f"- {p}: {', '.join(m)}" for p, m in absent.items()]
            lines.append("")
        lines += ["Top 10 features higher in each population:", ""]
        lines += [f"- {p}: {', '.join(s['top_up'])}" for p, s in part["populations"].items()]
        lines.append("")
    return "\n".join(lines)


def _observed_sentence(row: dict[str, Any]) -> str:
    """One sentence on the cell types outside the population whose observed counts rival its own."""
    observed = row["observed"]
    own = (
        f"Observed counts per 10k: {observed['mean']:.1f} in {row['population']} "
        f"(nonzero in {observed['detected']:.0%} of its cells)"
    )
    if not observed["within_twofold"]:
        return f"{own}; no other cell type of {MIN_TYPE_CELLS}+ cells has even half as many."
    others = ", ".join(
        f"{o['cell_type']} {o['mean']:.1f} ({o['n_cells']} cells, nonzero in {o['detected']:.0%})"
        for o in observed["within_twofold"]
    )
    return f"{own}; at least half as high outside it in: {others}."


def _scvi_cell(row: dict[str, Any], was_run: bool) -> str:
    """The scVI column of a marker row."""
    if not was_run:
        return "-"
    return "not up" if row["scvi_rank"] is None else str(row["scvi_rank"])


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="max epochs (default: the model's default)")
    parser.add_argument("--n-samples", type=int, default=5000, help="posterior draws per group")
    parser.add_argument("--delta", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 epochs, 500 draws, no scVI")
    parser.add_argument("--no-scvi", action="store_true", help="skip scvi-tools' SCVI reference")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (Markdown next to it)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.n_samples = 20, 500
    out = args.out or RESULTS_DIR / f"differential_bmmc{'_quick' if args.quick else ''}.json"

    adata = scamort.datasets.bmmc_cite()
    add_populations(adata)
    payload: dict[str, Any] = {
        "benchmark": "differential_bmmc",
        "config": {
            "epochs": args.epochs,
            "n_samples": args.n_samples,
            "delta": args.delta,
            "seed": args.seed,
            "quick": args.quick,
            "top": TOP,
            "populations": {k: list(v) for k, v in POPULATIONS.items()},
            "markers": {k: list(v) for k, v in MARKERS.items()},
            "protein_markers": {k: list(v) for k, v in PROTEIN_MARKERS.items()},
        },
        "data": {"n_cells": adata.n_obs, "n_genes": adata.n_vars, "n_proteins": 134, "batch_key": "batch"},
        "environment": environment_info(),
    }
    reference = wilcoxon_ranks(adata)
    scvi_reference = None
    if not (args.quick or args.no_scvi):
        scvi_reference, payload["scvi"] = scvi_ranks(adata, args)

    specs = {
        "rna": ({}, MARKERS, {}),
        "protein": (
            {
                "modalities": {
                    "rna": scamort.Modality(),
                    "prot": scamort.Modality(obsm_key="protein_expression"),
                }
            },
            PROTEIN_MARKERS,
            {"modality": "prot"},
        ),
    }
    for key, (model_options, markers, de_options) in specs.items():
        model = scamort.Model(adata, batch_key="batch", seed=args.seed, **model_options)
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        model.train(max_epochs=args.epochs, progress_bar=False)
        train_seconds = time.perf_counter() - start
        rows, absent, summary = run_de(
            model,
            adata,
            markers,
            args,
            delta=args.delta,
            reference=reference if key == "rna" else None,
            scvi_reference=scvi_reference if key == "rna" else None,
            **de_options,
        )
        payload[key] = {
            "model": repr(model),
            "train_seconds": train_seconds,
            "load_avg_1min_before": load_before,
            "load_avg_1min_after": os.getloadavg()[0],
            "epochs_run": len(model.history),
            "final_validation_elbo": float(model.history["validation_elbo"].iloc[-1]),
            "markers": rows,
            "n_in_top": sum(row["in_top"] for row in rows),
            "absent_markers": absent,
            "populations": summary,
        }
        if key == "rna" and scvi_reference is not None:
            payload["scvi"]["n_in_top"] = sum(
                row["scvi_rank"] is not None and row["scvi_rank"] <= TOP for row in rows
            )
        print(pd.DataFrame(rows).drop(columns=["in_top"]).to_string(index=False))

    write_json(out, payload)
    out.with_suffix(".md").write_text(markdown(payload))
    print(f"[bench] wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
