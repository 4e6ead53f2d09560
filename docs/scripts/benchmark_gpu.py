"""The ``gpu`` and ``memory_cpu`` sections of the benchmarks page (each drawn from its results file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark_cells import environment, get, table


# ------------------------------------------------------------------------------------------------- gpu
def gpu(runs: dict[str, dict[str, Any]], results: Path, generated: Path) -> str:
    """Throughput per batch size, the time-budget comparison with SCVI and the goals."""
    name, data = next(iter(runs.items()))
    cells, genes = get(data, "data", "n_cells"), get(data, "data", "n_genes")
    out = [
        "## One GPU (`gpu.py`)\n",
        f"On {data.get('device_name')} ({cells} cells × {genes} "
        "genes grown from the worm neurons, the whole CSR on the device): training throughput per batch "
        "size, and scamort and scvi-tools' SCVI under the same wall-clock budget on the same GPU, scored "
        "on the same held-out cells. Reproduce with `python benchmarks/gpu.py`.\n",
        environment(data, name),
        "\n### Throughput\n\n",
        table(
            ["batch", "cells/s", "steps timed", "peak device memory (MiB)", "GPU utilisation (mean %)"],
            [
                [
                    batch,
                    r.get("cells_per_second"),
                    r.get("steps"),
                    r.get("peak_device_memory_mb"),
                    get(r, "gpu_utilisation", "mean_percent"),
                ]
                for batch, r in data.get("throughput", {}).items()
                if isinstance(r, dict)
            ],
        ),
    ]
    budget = data.get("budget", {})
    out.append("\n### Held-out ELBO after the same time budget\n\n")
    out.append(
        table(
            ["tool", "batch", "epochs", "train seconds", "held-out ELBO", "peak device memory (MiB)"],
            [
                [
                    r.get("tool"),
                    r.get("batch_size"),
                    r.get("epochs_run"),
                    r.get("train_seconds"),
                    r.get("heldout_elbo"),
                    r.get("peak_device_memory_mb"),
                ]
                for r in (budget.get("scamort", {}), budget.get("scvi", {}))
            ],
        )
    )
    reach = data.get("time_to_scvi_final_heldout_elbo", {})
    goals = data.get("goals", {})
    out.append("\n### Goals\n\n")
    out.append(
        table(
            ["quantity", "measured", "goal", "met"],
            [
                [
                    "training cells/s at batch ≥ 1024",
                    goals.get("best_cells_per_second_batch_1024_or_more"),
                    goals.get("cells_per_second_goal"),
                    goals.get("cells_per_second_met"),
                ],
                [
                    "scamort's time to SCVI's final held-out ELBO / SCVI's time",
                    reach.get("fraction"),
                    goals.get("time_fraction_goal"),
                    goals.get("time_fraction_met"),
                ],
            ],
        )
    )
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ memory_cpu
def memory_cpu(runs: dict[str, dict[str, Any]], results: Path, generated: Path) -> str:
    """Peak host memory of in-memory training against the size of the counts."""
    name, data = next(iter(runs.items()))
    out = [
        "## Host memory of in-memory training (`memory_cpu.py`)\n",
        "Peak resident memory from reading the `.h5ad` through `Model(adata)`, one epoch of `train()` and "
        "`get_latent_representation()`, each case in a fresh process, as multiples of the counts' size as "
        "CSR (float32 values, int32 indices). 'Above import' counts the user's AnnData too; 'above loaded' "
        "is scamort's own share. Reproduce with `python benchmarks/memory_cpu.py`.\n",
        environment(data, name),
        table(
            [
                "case",
                "cells",
                "counts as CSR (MiB)",
                "AnnData (MiB)",
                "peak above import (MiB)",
                "× counts",
                "peak above loaded (MiB)",
                "× counts",
                "training cells/s",
            ],
            [
                [
                    f"`{k}`",
                    c.get("n_cells"),
                    c.get("data_mb"),
                    c.get("anndata_mb"),
                    c.get("peak_above_import_mb"),
                    c.get("peak_above_import_x_data"),
                    c.get("peak_above_loaded_mb"),
                    c.get("peak_above_loaded_x_data"),
                    c.get("train_cells_per_second"),
                ]
                for k, c in data.get("cases", {}).items()
            ],
        ),
    ]
    return "\n".join(out)
