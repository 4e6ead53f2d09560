"""The acceptance goals of the multimodal issue, checked on a ``benchmarks/multimodal.py`` result."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def goals(result: Mapping[str, Any]) -> dict[str, Any]:
    """Which of the issue's acceptance goals each scamort model meets (posterior-mean embedding)."""
    out: dict[str, Any] = {}
    cite = result.get("cite", {}).get("models", {})
    for name, scores in cite.items():
        if name.startswith("unpaired"):
            out[f"cite/{name}"] = {
                "both_groups_within_10_points": all(g <= 0.10 for g in scores["gap_to_paired"].values()),
                "no_group_over_half_own": all(f <= 0.5 for f in scores["own_group_fraction"].values()),
            }
    multiome = result.get("multiome", {}).get("models", {})
    multivi = [
        m["transfer_accuracy"]["atac_only"]
        for name, m in multiome.items()
        if name.startswith("multivi") and "transfer_accuracy" in m
    ]
    for name, scores in multiome.items():
        if name.startswith("unpaired"):
            out[f"multiome/{name}"] = {
                "rna_only_within_10_points": scores["gap_to_paired"]["rna_only"] <= 0.10,
                "atac_only_own_group_at_most_0.6": scores["own_group_fraction"]["atac_only"] <= 0.6,
                "atac_only_accuracy_at_least_best_multivi": (
                    scores["transfer_accuracy"]["atac_only"] >= max(multivi) if multivi else None
                ),
            }
    for part, models in (("cite", cite), ("multiome", multiome)):
        if "rna_only_model" in models:
            for name in models:
                if name.startswith("paired"):
                    out[f"{part}/{name}_leiden_ari_nmi_at_least_rna_only"] = _at_least(
                        models[name], models["rna_only_model"]
                    )
    imputation = result.get("imputation", {})
    for name in ("scamort_nb", "scamort_nbmixture"):
        if name in imputation:
            out[f"imputation/{name}_impute_median_pearson_at_least_0.73"] = (
                imputation[name]["impute"]["median_pearson"] >= 0.73
            )
    return out


def _at_least(joint: Mapping[str, Any], rna: Mapping[str, Any]) -> bool:
    return all(joint["leiden"][m] >= rna["leiden"][m] for m in ("ari", "nmi"))
