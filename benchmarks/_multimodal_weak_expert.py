"""What a weak expert does to the product of experts (``benchmarks/multimodal.py``, multiome part):
posterior statistics per group and expert, and the three-panel plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _multimodal_data import PAIRED, positions
from _multimodal_metrics import posterior_summary

import scamort
from scamort import inference


def posteriors(model: scamort.Model, modality: str | None, cells: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Mean and log-variance ``(n_cells, n_latent)`` of the joint posterior or of one expert (with the
    prior) for ``cells`` (reads the model's encoded cells; the public API returns only the mean)."""
    data = model._data.to(model.device)
    names = None if modality is None else (modality,)
    return inference.latent(model.module, data, positions(model, cells), modalities=names)


def weak_expert_report(model: scamort.Model, obs: pd.DataFrame, second: str) -> dict[str, Any]:
    """Posterior statistics of the joint posterior per group, and of each expert alone on paired cells."""
    groups = obs["group"].to_numpy()
    joint_mean, joint_log_variance = posteriors(model, None, obs.index)
    report: dict[str, Any] = {"joint_by_group": {}}
    for group in np.unique(groups):
        rows = groups == group
        report["joint_by_group"][str(group)] = posterior_summary(joint_mean[rows], joint_log_variance[rows])
    paired = groups == PAIRED
    report["paired_cells_single_expert"] = {}
    for name in ("rna", second):
        mean, log_variance = posteriors(model, name, obs.index)
        report["paired_cells_single_expert"][name] = posterior_summary(mean[paired], log_variance[paired])
    return report


def plot_weak_expert(model: scamort.Model, obs: pd.DataFrame, path: Path) -> None:
    """Three panels: KL to the prior per group and expert; posterior variance per latent dimension;
    the joint embedding's first two principal components coloured by group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = obs["group"].to_numpy()
    joint_mean, joint_lv = posteriors(model, None, obs.index)
    experts = {name: posteriors(model, name, obs.index) for name in ("rna", "atac")}
    paired = groups == PAIRED
    order = ["paired", "rna_only", "atac_only"]

    def kl(mean: np.ndarray, log_variance: np.ndarray) -> np.ndarray:
        return 0.5 * (mean**2 + np.exp(log_variance) - 1 - log_variance).sum(1)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    boxes = [kl(joint_mean[groups == g], joint_lv[groups == g]) for g in order]
    boxes += [kl(m[paired], lv[paired]) for m, lv in experts.values()]
    axes[0].boxplot(boxes, showfliers=False)
    axes[0].set_xticks(
        range(1, 6), [f"joint\n{g}" for g in order] + ["RNA expert\npaired", "ATAC expert\npaired"]
    )
    axes[0].set_ylabel("KL(q(z|x) || N(0, I)) per cell")
    axes[0].set_title("How far each posterior moves from the prior")
    for label, (_, lv), rows in (
        ("joint, paired", (joint_mean, joint_lv), paired),
        ("joint, RNA-only cells", (joint_mean, joint_lv), groups == "rna_only"),
        ("joint, ATAC-only cells", (joint_mean, joint_lv), groups == "atac_only"),
        ("ATAC expert, paired cells", experts["atac"], paired),
    ):
        axes[1].plot(np.exp(lv[rows]).mean(0), marker="o", label=label)
    axes[1].set_xlabel("latent dimension")
    axes[1].set_ylabel("mean posterior variance (prior = 1)")
    axes[1].set_ylim(0, 1.05)
    axes[1].legend(fontsize=8)
    axes[1].set_title("A weak expert leaves the posterior near the prior")
    centred = joint_mean - joint_mean.mean(0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ components[:2].T
    for group, colour in zip(order, ("tab:grey", "tab:blue", "tab:red"), strict=True):
        rows = groups == group
        axes[2].scatter(xy[rows, 0], xy[rows, 1], s=8, alpha=0.7, c=colour, label=group)
    axes[2].set_xlabel("PC 1 of the joint latent mean")
    axes[2].set_ylabel("PC 2")
    axes[2].legend(fontsize=8)
    axes[2].set_title("Joint embedding (multiome, ATAC bernoulli)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
