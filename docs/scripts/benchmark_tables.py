"""Generate the documentation's benchmarks page from ``benchmarks/results/*.json``.

Every number on the page is read from a results file when the docs are built; nothing is typed by hand. Known
benchmarks (``core_worm``, ``multimodal``, ``refinement``, ``differential_bmmc``, ``scale_cpu``) get curated
tables and figures; any other results file gets a generic table of its scalar entries, so a new benchmark
appears on the page as soon as its JSON is committed. Smoke runs (``*_quick.json``) are listed, not tabulated.

Run by ``docs/conf.py`` on every build; also runnable alone::

    python docs/scripts/benchmark_tables.py benchmarks/results docs/benchmarks.md docs/_generated
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

FIGURES = "benchmarks"  # sub-folder of the generated folder holding the page's images

HEADER = """\
# Benchmarks

```{{note}}
This page is generated when the documentation is built, by `docs/scripts/benchmark_tables.py`, from the
result files in `benchmarks/results/` ({n_files} files). No number on it is typed by hand: re-running a
benchmark script and rebuilding the docs updates it. How each benchmark is run, what every JSON field
means and the settings tried along the way are described in `benchmarks/README.md` in the repository.
```

Each script runs every tool one after the other in a single process and writes one JSON file; compare numbers
only within one file (other machines, gene selections or splits move them). Timings come from shared CPU
machines: the environment line of each section says which, and ratios between tools measured in the same run
are more meaningful than absolute times.
"""


# --------------------------------------------------------------------------------------------- formatting
def fmt(value: Any, digits: int = 3) -> str:
    """Format one table cell: booleans as yes/no, floats with ``digits`` significant figures (at least)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if value == 0 or (value.is_integer() and abs(value) < 1e6):
            return str(int(value))
        if abs(value) >= 1e4:
            return f"{value:,.0f}"
        magnitude = math.floor(math.log10(abs(value)))
        decimals = max(digits - 1 - magnitude, 1 if abs(value) >= 1 else 0)
        return f"{value:.{decimals}f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items()) or "–"
    if isinstance(value, list | tuple):
        return " / ".join(fmt(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown pipe table; cells that are not strings go through :func:`fmt`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def get(data: Any, *path: str | int, default: Any = None) -> Any:
    """``data[path[0]][path[1]]...``, or ``default`` where any step is missing."""
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return default
    return data


def environment(data: dict[str, Any], name: str) -> str:
    """One line naming the results file, when and where it was measured."""
    env = data.get("environment", {})
    packages = env.get("packages", {})
    versions = ", ".join(f"{k} {v}" for k, v in packages.items() if k in {"scamort", "scvi-tools", "torch"})
    parts = [f"`{name}`", env.get("timestamp_utc", "time not recorded")]
    if "cpu_count" in env:
        parts.append(f"{env['cpu_count']} CPUs, {env.get('torch_num_threads', '?')} torch threads")
    if env.get("cuda_available"):
        parts.append("CUDA available")
    if versions:
        parts.append(versions)
    return "*Measured:* " + "; ".join(str(p) for p in parts) + ".\n"


def figure(path: Path, generated: Path, caption: str) -> str:
    """Copy an image into the generated folder and return a MyST figure block for it."""
    target = generated / FIGURES / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or target.read_bytes() != path.read_bytes():
        shutil.copyfile(path, target)
    return f"```{{figure}} _generated/{FIGURES}/{path.name}\n:width: 100%\n\n{caption}\n```\n"


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


# ------------------------------------------------------------------------------------------- scale_cpu
def _scale_plot(cases: dict[str, dict[str, Any]], generated: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float, float]]] = {}
    for case in cases.values():
        if case.get("tool") == "scamort" and "lr_scaling" in case and case.get("epochs_run") == 10:
            series.setdefault(case["lr_scaling"], []).append(
                (case["batch_size"], case["cells_per_second"], case["heldout_elbo"])
            )
    series = {k: sorted(v) for k, v in series.items() if len(v) > 1}
    if not series:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for scaling, points in series.items():
        batch, speed, elbo = zip(*points, strict=True)
        left.plot(batch, speed, marker="o", label=f"scamort, lr_scaling={scaling!r}")
        right.plot(batch, elbo, marker="o", label=f"scamort, lr_scaling={scaling!r}")
    scvi = [c for c in cases.values() if c.get("tool") == "scvi-tools" and c.get("epochs_run") == 10]
    if scvi:
        left.axhline(scvi[0]["cells_per_second"], color="0.4", ls="--", label="scvi-tools, batch 128")
        right.axhline(scvi[0]["heldout_elbo"], color="0.4", ls="--", label="scvi-tools, batch 128")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
    left.set_ylabel("training cells per second")
    right.set_ylabel("held-out ELBO per cell (higher is better)")
    right.legend(frameon=False, fontsize=8)
    left.set_title("throughput")
    right.set_title("quality after the same number of epochs")
    target = generated / FIGURES / "scale_cpu_batch_size.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def scale_cpu(runs: dict[str, dict[str, Any]], results: Path, generated: Path) -> str:
    """Throughput and quality against batch size, a time budget, and out-of-core memory."""
    name, data = next(iter(runs.items()))
    cases = data.get("cases", {})
    out = [
        "## Scale on CPU (`scale_cpu.py`)\n",
        "Training throughput and held-out ELBO on a data set grown from the worm neurons, scamort and "
        "scvi-tools side by side at scamort's default batch size and under the same time budget, scamort "
        "across batch sizes with both learning-rate scalings, and the peak memory of in-memory and backed "
        "(out-of-core) training on large grown data sets. Reproduce with `python benchmarks/scale_cpu.py`.\n",
        environment(data, name),
    ]
    in_memory = {k: c for k, c in cases.items() if "heldout_elbo" in c}
    out.append("\n### Throughput and quality\n\n")
    out.append(
        table(
            [
                "case",
                "tool",
                "cells",
                "batch",
                "lr scaling",
                "epochs",
                "s/epoch",
                "cells/s",
                "held-out ELBO",
                "peak RSS (MiB)",
            ],
            [
                [
                    f"`{k}`",
                    c.get("tool"),
                    c.get("n_cells"),
                    c.get("batch_size"),
                    c.get("lr_scaling"),
                    c.get("epochs_run"),
                    c.get("seconds_per_epoch"),
                    c.get("cells_per_second"),
                    c.get("heldout_elbo"),
                    c.get("peak_rss_mb"),
                ]
                for k, c in in_memory.items()
            ],
        )
    )
    plot = _scale_plot(cases, generated)
    if plot is not None:
        out.append(
            "\n"
            + figure(
                plot,
                generated,
                "Throughput and held-out ELBO after the same number of epochs "
                "against batch size (drawn from the results file).",
            )
        )
    memory = {k: c for k, c in cases.items() if "heldout_elbo" not in c}
    if memory:
        out.append("\n### Memory at a million cells\n\n")
        out.append(
            table(
                [
                    "case",
                    "tool",
                    "cells",
                    "batch",
                    "s/epoch",
                    "cells/s",
                    "peak RSS (MiB)",
                    "dense matrix (MiB)",
                    "file (MiB)",
                    "validation ELBO per epoch",
                ],
                [
                    [
                        f"`{k}`",
                        c.get("tool"),
                        c.get("n_cells"),
                        c.get("batch_size"),
                        c.get("seconds_per_epoch"),
                        c.get("cells_per_second"),
                        c.get("peak_rss_mb"),
                        c.get("dense_matrix_would_be_mb"),
                        c.get("file_mb"),
                        c.get("validation_elbo_per_epoch"),
                    ]
                    for k, c in memory.items()
                ],
            )
        )
    summary = data.get("summary", {})
    if summary:
        out.append("\n### Summary recorded by the script\n\n")
        out.append(table(["quantity", "value"], [[f"`{k}`", v] for k, v in summary.items()]))
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- other
def _flatten(data: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "environment":
                continue
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list) and any(isinstance(v, dict | list) for v in data):
        for i, value in enumerate(data):
            yield from _flatten(value, f"{prefix}[{i}]")
    else:
        yield prefix, data


MAX_GENERIC_ROWS = 200


def generic(runs: dict[str, dict[str, Any]], results: Path, generated: Path) -> str:
    """Any other results file: its scalar entries as one table (the first ``MAX_GENERIC_ROWS``)."""
    out = []
    for name, data in runs.items():
        out.append(f"### `{name}`\n\n")
        if isinstance(data, dict):
            out.append(environment(data, name))
        rows = [[f"`{k}`", v] for k, v in _flatten(data)]
        out.append("\n" + table(["entry", "value"], rows[:MAX_GENERIC_ROWS]))
        if len(rows) > MAX_GENERIC_ROWS:
            out.append(f"\n({len(rows) - MAX_GENERIC_ROWS} more entries are in the file.)\n")
    return "\n".join(out)


SECTIONS: dict[str, Callable[[dict[str, dict[str, Any]], Path, Path], str]] = {
    "core_worm": core_worm,
    "multimodal": multimodal,
    "refinement": refinement,
    "differential_bmmc": differential,
    "scale_cpu": scale_cpu,
}


def _kind(name: str, data: Any) -> str:
    stem = Path(name).stem
    if isinstance(data, dict) and isinstance(data.get("benchmark"), str) and data["benchmark"] in SECTIONS:
        return data["benchmark"]
    for kind in SECTIONS:
        if stem == kind or stem.startswith(kind + "_"):
            return kind
    return ""


def _same_shape(a: Any, b: Any) -> bool:
    """Whether two results files have the same top-level keys (runs of one script, one mode)."""
    return isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b)


def render(results: Path, generated: Path) -> str:
    """The whole page as MyST Markdown; images referenced on it are copied or drawn into ``generated``.

    Each known benchmark's section is drawn from its main file (``<benchmark>.json``, else the first of its
    files by name) and, for ``core_worm``, from other files of the same shape (re-runs). Every other file,
    and any file a curated section cannot read, is shown as a generic table under "Other results", so the
    build never drops or fails on a results file.
    """
    files = sorted(results.glob("*.json"))
    loaded = {path.name: json.loads(path.read_text()) for path in files}
    quick = {n: d for n, d in loaded.items() if Path(n).stem.endswith("_quick")}
    grouped: dict[str, dict[str, Any]] = {}
    for name, data in loaded.items():
        if name not in quick:
            grouped.setdefault(_kind(name, data), {})[name] = data
    others: dict[str, Any] = dict(grouped.pop("", {}))
    parts = [HEADER.format(n_files=len(files))]
    for kind, render_section in SECTIONS.items():
        runs = grouped.get(kind)
        if not runs:
            continue
        main = f"{kind}.json" if f"{kind}.json" in runs else next(iter(runs))
        chosen = {main: runs[main]}
        if kind == "core_worm":
            chosen.update((n, d) for n, d in runs.items() if n != main and _same_shape(d, runs[main]))
        others.update((n, d) for n, d in runs.items() if n not in chosen)
        try:
            parts.append(render_section(chosen, results, generated))
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            print(
                f"benchmark_tables: {kind} section failed ({exc!r}); shown as a generic table",
                file=sys.stderr,
            )
            others.update(chosen)
    if others:
        parts.append("## Other results\n\n" + generic(dict(sorted(others.items())), results, generated))
    if quick:
        parts.append(
            "## Smoke runs\n\nThese files come from each script's `--quick` mode (a few epochs), which "
            "checks that the script runs end to end; their numbers are not measurements.\n\n"
            + "".join(
                f"- `{n}` ({get(d, 'environment', 'timestamp_utc', default='time not recorded')})\n"
                for n, d in quick.items()
            )
        )
    return "\n\n".join(parts)


def write_page(results: Path, page: Path, generated: Path) -> Path:
    """Render the page and write it to ``page`` (only when its text changed, so Sphinx rebuilds it then).

    Parameters
    ----------
    results
        ``benchmarks/results``, holding the JSON files (and the PNGs some benchmarks write).
    page
        The Markdown file to write, e.g. ``docs/benchmarks.md``.
    generated
        Folder (inside the docs source tree) receiving the page's images.

    Returns
    -------
    Path
        ``page``.
    """
    text = render(results, generated)
    if not page.exists() or page.read_text() != text:
        page.write_text(text)
    return page


if __name__ == "__main__":
    write_page(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
