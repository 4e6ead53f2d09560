"""The ``scale_cpu`` section of the benchmarks page: throughput, quality and memory, with a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark_cells import FIGURES, environment, figure, table


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
    in_memory = {k: c for k, c in cases.items() if "heldout_elbo" in c and "store" not in c}
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
    stores = {k: c for k, c in cases.items() if "store" in c}
    if stores:
        out.append(_out_of_core(stores, data.get("summary", {}).get("out_of_core", {}), data))
    interleaved = {k: c for k, c in cases.items() if "interleaved" in c}
    if interleaved:
        out.append(
            "\nThe same comparison in one process, one epoch of in-memory and out-of-core training in turn "
            "(speed ratios in memory time / out-of-core time per round; round 1 is each one's first "
            "epoch):\n\n"
        )
        out.append(
            table(
                [
                    "case",
                    "store",
                    "cells",
                    "batch",
                    "out-of-core arm",
                    "ratio per round",
                    "1st epoch",
                    "later",
                ],
                [row for k, c in interleaved.items() for row in _interleaved_rows(k, c)],
            )
        )
    memory = {
        k: c
        for k, c in cases.items()
        if "heldout_elbo" not in c and "store" not in c and "interleaved" not in c
    }
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
        rows = [[f"`{k}`", v] for k, v in summary.items() if k != "out_of_core"]
        out.append(table(["quantity", "value"], rows))
    return "\n".join(out)


def _interleaved_rows(name: str, case: dict[str, Any]) -> list[list[Any]]:
    """One row per out-of-core arm of an interleaved case (older results have one arm, no suffix)."""
    arms = [a for a in case.get("train_call_seconds", {"disk": None}) if a != "memory"]
    rows = []
    for arm in arms:
        suffix = "" if "speed_ratio_per_round" in case else f"_{arm}"
        rows.append(
            [
                f"`{name}`",
                case.get("interleaved"),
                case.get("n_cells"),
                case.get("batch_size"),
                arm,
                ", ".join(f"{r:.2f}" for r in case.get(f"speed_ratio_per_round{suffix}", [])),
                case.get(f"first_epoch_ratio{suffix}"),
                case.get(f"later_epochs_ratio{suffix}"),
            ]
        )
    return rows


def _per_cell(ratio: dict[str, Any]) -> str | None:
    """Bytes of peak RSS per cell added from the small size to the large one, split into the user's
    opened object and scamort's own share (older results lack them)."""
    if "opened_object_bytes_per_extra_cell" not in ratio:
        return None
    return f"{ratio['opened_object_bytes_per_extra_cell']:.0f} / {ratio['scamort_bytes_per_extra_cell']:.0f}"


def _out_of_core(
    stores: dict[str, dict[str, Any]], ratios: dict[str, dict[str, Any]], data: dict[str, Any]
) -> str:
    """The out-of-core cases against in memory: throughput (first epoch, later ones), memory, quality."""
    merged = data.get("environment_of_merged_cases", {})
    when = f" (measured {merged['timestamp_utc']})" if merged.get("timestamp_utc") else ""
    rows = [
        [
            f"`{k}`",
            c.get("store"),
            c.get("n_cells"),
            c.get("batch_size"),
            c.get("prefetch"),
            c.get("first_epoch_cells_per_second"),
            c.get("later_epochs_cells_per_second"),
            c.get("heldout_elbo"),
            c.get("peak_rss_mb"),
            ratios.get(k, {}).get("peak_rss_large_over_small"),
            c.get("opened_object_mb"),
            _per_cell(ratios.get(k, {})),
            c.get("file_mb"),
        ]
        for k, c in stores.items()
    ]
    headers = [
        "case",
        "store",
        "cells",
        "batch",
        "prefetch",
        "cells/s, 1st epoch",
        "cells/s, later",
        "held-out ELBO",
        "peak RSS (MiB)",
        "RSS large / small",
        "opened object (MiB)",
        "bytes per extra cell: opened object / scamort",
        "file (MiB)",
    ]
    note = (
        "Each case in its own process (peak RSS its own); speeds of different cases are comparable only on "
        "a quiet host, so the speed ratios are taken from the interleaved runs below.\n\n"
    )
    return f"\n### Out of core against in memory{when}\n\n" + note + table(headers, rows)
