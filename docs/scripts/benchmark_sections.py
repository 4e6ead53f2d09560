"""Curated sections of the benchmarks page: one function per benchmark script, each reading its JSON.

Every function takes ``runs`` (results file name -> parsed JSON, the main file first), the results folder and
the generated folder (for images), and returns MyST Markdown. No number is typed here: all come from the
files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark_cells import environment, figure, fmt, get, table


# ------------------------------------------------------------------------------------------- core_worm
def core_worm(runs: dict[str, dict[str, Any]], results: Path, generated: Path) -> str:
    """scamort vs SCVI on the worm neurons: quality of the first run, speed of every run."""
    name, first = next(iter(runs.items()))
    cfg, data = first.get("config", {}), first.get("data", {})
    out = [
        "## scamort vs SCVI on the worm neurons (`core_worm.py`)\n",
        "Both tools train the same architecture on the same training cells and are evaluated on the same "
        "held-out cells, everything else at each tool's defaults. Reproduce with "
        "`python benchmarks/core_worm.py`.\n",
        environment(first, name),
        table(
            ["setting", "value"],
            [
                ["cells / genes", f"{fmt(data.get('n_cells'))} / {fmt(data.get('n_genes'))}"],
                ["held-out cells", data.get("n_heldout_cells")],
                [
                    "latent / hidden / layers",
                    f"{cfg.get('n_latent')} / {cfg.get('n_hidden')} / {cfg.get('n_layers')}",
                ],
                [
                    "likelihood, batch size, max epochs",
                    f"{cfg.get('likelihood')}, {cfg.get('batch_size')}, {cfg.get('epochs')}",
                ],
                ["importance samples (marginal LL)", cfg.get("n_mc_samples")],
            ],
        ),
    ]
    res = first.get("results", {})
    sca, scv = res.get("scamort", {}), res.get("scvi", {})
    comp = first.get("comparison", {})
    metrics = [
        ("held-out ELBO per cell (nats)", "heldout_elbo", "heldout_elbo_diff_scamort_minus_scvi"),
        (
            "held-out marginal log-likelihood per cell (nats)",
            "heldout_marginal_ll",
            "heldout_marginal_ll_diff_scamort_minus_scvi",
        ),
        ("Leiden ARI vs labels", "ari", "ari_diff_scamort_minus_scvi"),
        ("Leiden NMI vs labels", "nmi", "nmi_diff_scamort_minus_scvi"),
        ("epochs run", "epochs_run", None),
        ("KL weight in the last epoch", "final_kl_weight", None),
        ("seconds per epoch", "s_per_epoch", None),
        ("peak resident memory (MiB)", "peak_rss_mb", None),
    ]
    out.append("\n### Quality (higher is better)\n\n")
    out.append(
        table(
            ["metric", "scamort", "SCVI", "scamort − SCVI"],
            [
                [label, sca.get(key), scv.get(key), comp.get(diff) if diff else ""]
                for label, key, diff in metrics
            ],
        )
    )
    out.append(
        "\n### Speed, every committed run\n\nSCVI's seconds per epoch divided by scamort's, side by side in "
        "one process; the load average shows whether other work competed for the CPU.\n\n"
    )
    rows = []
    for run_name, run in runs.items():
        r = run.get("results", {})
        rows.append(
            [
                f"`{run_name}`",
                get(run, "environment", "timestamp_utc", default="–")[:16],
                get(r, "scamort", "s_per_epoch"),
                get(r, "scvi", "s_per_epoch"),
                get(run, "comparison", "speedup_s_per_epoch_scvi_over_scamort"),
                get(r, "scamort", "load_avg_1min_before"),
            ]
        )
    out.append(
        table(["file", "UTC", "scamort s/epoch", "SCVI s/epoch", "SCVI ÷ scamort", "load before"], rows)
    )
    notes = first.get("notes", [])
    if notes:
        out.append("\nNotes recorded with the run:\n\n" + "".join(f"- {fmt(n)}\n" for n in notes))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ multimodal
def _model_label(name: str, model: dict[str, Any]) -> str:
    changed = model.get("settings_changed") or model.get("architecture")
    suffix = f" ({fmt(changed)})" if changed and changed != "default" else ""
    return f"`{name}`{suffix}"


def _integration_table(part: dict[str, Any]) -> str:
    models = part.get("models", {})
    groups = sorted({g for m in models.values() for g in m.get("own_group_fraction", {})})
    transfer = [g for g in groups if g != "paired"]
    headers = (
        ["model", "epochs"]
        + [f"own-group share: {g}" for g in groups]
        + [f"transfer accuracy: {g}" for g in transfer]
        + ["paired LOO accuracy", "Leiden ARI", "Leiden NMI"]
    )
    rows = []
    for name, m in models.items():
        rows.append(
            [_model_label(name, m), m.get("epochs_run")]
            + [get(m, "own_group_fraction", g) for g in groups]
            + [get(m, "transfer_accuracy", g) for g in transfer]
            + [m.get("paired_loo_accuracy"), get(m, "leiden", "ari"), get(m, "leiden", "nmi")]
        )
    return table(headers, rows)


def multimodal(runs: dict[str, dict[str, Any]], results: Path, generated: Path) -> str:
    """Unpaired integration and protein imputation against MULTIVI and TOTALVI."""
    name, data = next(iter(runs.items()))
    settings = data.get("settings", {})
    out = [
        "## Multimodal integration and imputation (`multimodal.py`)\n",
        "Structurally unpaired data are made from the bundled paired CITE-seq and multiome cells by "
        "splitting them into paired, single-modality groups. *Own-group share*: the fraction of each "
        "cell's neighbours in the joint embedding that come from its own group (lower means the groups "
        "mix; a perfectly mixed embedding gives the group's share of all cells). *Transfer accuracy*: "
        "cell-type labels transferred from the paired cells by nearest neighbours. Reproduce with "
        "`python benchmarks/multimodal.py`.\n",
        environment(data, name),
        "Every scamort model uses the package defaults unless its row names a change: "
        + fmt({k: v for k, v in settings.items() if v is not None})
        + ".\n",
    ]
    for part, title in [("cite", "CITE-seq (RNA + protein)"), ("multiome", "Multiome (RNA + ATAC)")]:
        if part not in data:
            continue
        info = data[part]
        out.append(f"\n### {title}\n\n")
        out.append(
            f"{fmt(info.get('n_cells'))} cells, features {fmt(info.get('n_features'))}, "
            f"{fmt(info.get('n_cell_types'))} cell types; groups {fmt(info.get('group_sizes'))}.\n\n"
        )
        out.append(_integration_table(info))
        plot = info.get("plot")
        if plot and (results / Path(plot).name).exists():
            out.append(
                "\n"
                + figure(
                    results / Path(plot).name,
                    generated,
                    "What a weak expert does to the product of experts (written by the benchmark).",
                )
            )
    imp = data.get("imputation")
    if imp:
        out.append("\n### Protein imputation for held-out cells\n\n")
        out.append(
            f"{fmt(imp.get('n_heldout'))} of {fmt(imp.get('n_cells'))} cells have their "
            f"{fmt(imp.get('n_proteins'))} proteins hidden while training; Pearson correlation per protein "
            "between imputed and observed values.\n\n"
        )
        rows = []
        for method, value in imp.items():
            if not isinstance(value, dict):
                continue
            if "median_pearson" in value:
                rows.append([f"`{method}`", "", value.get("median_pearson"), value.get("mean_pearson")])
            for variant, scores in value.items():
                if isinstance(scores, dict) and "median_pearson" in scores:
                    rows.append(
                        [f"`{method}`", variant, scores.get("median_pearson"), scores.get("mean_pearson")]
                    )
        out.append(table(["method", "variant", "median Pearson", "mean Pearson"], rows))
    goals = data.get("goals", {})
    if goals:
        out.append("\n### Goals\n\n")
        rows = []
        for goal, value in goals.items():
            if isinstance(value, dict):
                rows.extend(
                    [f"`{goal}`", criterion.replace("_", " "), met] for criterion, met in value.items()
                )
            else:
                rows.append([f"`{goal}`", "", value])
        out.append(table(["goal", "criterion", "met"], rows))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ refinement
def _gap_table(label: str, block: dict[str, Any]) -> list[Any]:
    elbo, closure = block.get("elbo", {}), block.get("closure", {})
    steps = [k for k in elbo if k.startswith("refined_")]
    return (
        [label, get(block, "summary", "n_cells"), elbo.get("encoder")]
        + [f"{fmt(elbo[s])} ({fmt(closure.get(s.removeprefix('refined_')))})" for s in steps]
        + [elbo.get("near_optimum"), get(block, "marginal_ll", "refined_minus_encoder")]
    )


def refinement(runs: dict[str, dict[str, Any]], results: Path, generated: Path) -> str:
    """Per-cell refinement: how much of the amortization gap a few steps close."""
    name, data = next(iter(runs.items()))
    cfg = data.get("config", {})
    steps = cfg.get("steps", [])
    out = [
        "## Refinement and the amortization gap (`refinement_worm.py`)\n",
        "For held-out cells, the per-cell ELBO of the encoder's posterior, of the posterior refined for a "
        "number of steps (encoder frozen), and of a long per-cell optimisation standing in for the optimum. "
        "In brackets, the *closure*: the share of the gap between encoder and optimum that the refinement "
        "closes. The last column is the gain in importance-sampled marginal log-likelihood with the refined "
        "proposal. Reproduce with `python benchmarks/refinement_worm.py`.\n",
        environment(data, name),
    ]
    rows = []
    if "worm" in data:
        w = data["worm"]
        merged = dict(w.get("heldout", {}))
        merged["marginal_ll"] = w.get("marginal_ll", {})
        rows.append(_gap_table("worm neurons, held-out cells", merged))
    for train_name, block in data.get("bmmc_ood", {}).items():
        if not isinstance(block, dict) or "training" not in block:
            continue
        for split, title in [("in_distribution", "held-out cells"), ("other_batch", "the other batch")]:
            if split in block:
                rows.append(_gap_table(f"BMMC {train_name.replace('_', ' ')}, {title}", block[split]))
    out.append(
        table(
            ["data", "cells", "encoder ELBO"]
            + [f"refined {s} steps (closure)" for s in steps]
            + ["near optimum", "marginal LL gain (nats)"],
            rows,
        )
    )
    cost = get(data, "worm", "refinement_cost", default={})
    if cost:
        out.append(
            f"\nRefining {fmt(cost.get('n_cells'))} worm cells for {fmt(cost.get('n_steps'))} steps took "
            f"{fmt(cost.get('seconds'))} s, {fmt(cost.get('seconds_relative_to_one_epoch'))} times one "
            "training epoch.\n"
        )
    goals = data.get("goals", {})
    if goals:
        out.append("\n" + table(["goal", "value"], [[f"`{k}`", v] for k, v in goals.items()]))
    for png in sorted(results.glob("refinement_*_gap.png")):
        label = png.stem.removeprefix("refinement_").removesuffix("_gap").replace("_", " ")
        out.append(
            "\n"
            + figure(
                png,
                generated,
                f"Amortization gap, {label}: gap over refinement steps and its "
                "per-cell distribution (written by the benchmark).",
            )
        )
    return "\n".join(out)


# ------------------------------------------------------------------------------------- differential DE
def differential(runs: dict[str, dict[str, Any]], results: Path, generated: Path) -> str:
    """Where canonical markers rank in scamort's DE, against scanpy's Wilcoxon test and scvi-tools."""
    name, data = next(iter(runs.items()))
    cfg = data.get("config", {})
    out = [
        "## Differential expression on bone-marrow CITE-seq (`differential_bmmc.py`)\n",
        f'One population against all other cells, `mode="change"`, `delta={fmt(cfg.get("delta"))}`, '
        f"{fmt(cfg.get('n_samples'))} posterior draws per group. *rank*: the marker's position among the "
        "features higher in the population, in scamort's evidence order; the goal is a rank within the top "
        f"{fmt(cfg.get('top'))}. *Wilcoxon*: scanpy's rank; *scVI*: the rank in scvi-tools' own DE with the "
        "same settings. Reproduce with `python benchmarks/differential_bmmc.py`.\n",
        environment(data, name),
    ]
    summary = []
    for key, title in [("rna", "RNA markers"), ("protein", "surface-protein markers")]:
        block = data.get(key)
        if not block:
            continue
        markers = block.get("markers", [])
        summary.append([title, block.get("n_in_top"), len(markers), block.get("absent_markers")])
        out.append(f"\n### {title[0].upper() + title[1:]}\n\n")
        out.append(
            table(
                [
                    "population",
                    "marker",
                    "rank",
                    "rank (all)",
                    "proba_de",
                    "lfc_mean",
                    "FDR 5%",
                    "Wilcoxon",
                    "scVI",
                ],
                [
                    [
                        m.get("population"),
                        m.get("marker"),
                        m.get("rank"),
                        m.get("rank_all"),
                        m.get("proba_de"),
                        m.get("lfc_mean"),
                        m.get("is_de_fdr"),
                        m.get("wilcoxon_rank"),
                        m.get("scvi_rank"),
                    ]
                    for m in markers
                ],
            )
        )
    scvi = data.get("scvi", {})
    if scvi:
        summary.append(["scvi-tools RNA markers", scvi.get("n_in_top"), "", ""])
    out.insert(3, "\n" + table(["markers", "in top", "scored", "absent from the data"], summary))
    return "\n".join(out)
