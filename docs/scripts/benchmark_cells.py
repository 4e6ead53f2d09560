"""Table cells, Markdown tables and figures for the generated benchmarks page (see ``benchmark_tables``)."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

FIGURES = "benchmarks"  # sub-folder of the generated folder holding the page's images


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
