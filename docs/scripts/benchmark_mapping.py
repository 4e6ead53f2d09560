"""The ``mapping`` section of the benchmarks page: reference mapping and label transfer vs scArches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark_cells import environment, fmt, table

METRICS = (
    ("accuracy", "accuracy"),
    ("macro F1", "macro_f1"),
    ("ECE", "ece"),
    ("novelty AUROC", "novelty_auroc"),
    ("mixing", "mixing"),
    ("map seconds", "map_seconds"),
    ("protein median r", "protein_median_r"),
)
DESIGN_TITLES = {
    "worm": "worm neurons: random 50/50 split, query site effect, type removed from the reference",
    "bmmc": "BMMC CITE-seq: reference s1d1 (RNA + protein), query s1d2 given as RNA only",
}


def _cell(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, dict) or "mean" not in value:
        return "–"
    if value.get("n", 1) > 1:
        return f"{fmt(value['mean'])} ± {fmt(value['std'])}"
    return fmt(value["mean"])


def mapping(runs: dict[str, dict[str, Any]], results: Path, generated: Path) -> str:
    """Mean ± sd over seeds per design, protocol and tool, then the goals' pass/fail."""
    name, data = next(iter(runs.items()))
    out = [
        "## Reference mapping and label transfer vs scArches (`mapping.py`)\n\n",
        "scamort's `Model.load_query_data` and label transfer next to scvi-tools' SCVI → SCANVI → "
        "`SCANVI.load_query_data` (and TOTALVI's for the CITE-seq design), under each tool's defaults "
        "and under a matched budget of reference and query epochs. Label metrics are on query cells "
        "whose type the reference has; the novelty AUROC scores the cells of types it lacks; mixing is "
        "the reference share among each query cell's 15 neighbours over the share perfect mixing gives. "
        f"Seeds: {fmt(data.get('seeds'))}. Reproduce with `python benchmarks/mapping.py`.\n\n",
        environment(data, name),
    ]
    metric_names = [label for label, _ in METRICS]
    for design, protocols in data.get("summary", {}).items():
        size = data.get("data", {}).get(design, {})
        out.append(
            f"\n### {DESIGN_TITLES.get(design, design)}\n\n"
            f"Reference {fmt(size.get('n_reference'))} cells, query {fmt(size.get('n_query'))} "
            f"({fmt(size.get('n_query_known'))} of reference types).\n\n"
        )
        rows = [
            [protocol, tool, *(_cell(record, key) for _, key in METRICS)]
            for protocol, tools in protocols.items()
            for tool, record in tools.items()
        ]
        out.append(table(["protocol", "tool", *metric_names], rows))
    goal_rows = []
    for design, protocols in data.get("goals", {}).items():
        if not isinstance(protocols, dict) or design.startswith("anchor"):
            continue
        for protocol, variants in protocols.items():
            for variant, checks in variants.items():
                failed = [k for k, v in checks.items() if v is False and k != "all_pass"]
                goal_rows.append(
                    [design, protocol, variant, checks.get("all_pass"), ", ".join(failed) or "–"]
                )
    if goal_rows:
        out.append("\n### Goals (issue 17), on the seed means\n\n")
        out.append(table(["design", "protocol", "scamort variant", "all pass", "failed"], goal_rows))
    anchor = data.get("goals", {}).get("anchor_scarches_outside_set")
    if isinstance(anchor, dict):
        out.append(f"\nscArches (SCANVI) on a labelled set outside the project, design (b): {fmt(anchor)}.\n")
    return "".join(out)
