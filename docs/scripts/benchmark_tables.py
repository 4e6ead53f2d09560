"""Generate the documentation's benchmarks page from ``benchmarks/results/*.json``.

Every number on the page is read from a results file when the docs are built; nothing is typed by hand. Known
benchmarks (``core_worm``, ``multimodal``, ``refinement``, ``differential_bmmc``, ``scale_cpu``, ``gpu``,
``memory_cpu``, ``mapping``) get curated tables and figures; any other results file gets a generic table of
its scalar entries, so a new benchmark appears on the page as soon as its JSON is committed. Smoke runs
(``*_quick.json``) are listed, not tabulated.

Run by ``docs/conf.py`` on every build; also runnable alone::

    python docs/scripts/benchmark_tables.py benchmarks/results docs/benchmarks.md docs/_generated
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmark_cells import FIGURES, environment, fmt, get, table
from benchmark_gpu import gpu, memory_cpu
from benchmark_mapping import mapping
from benchmark_scale import scale_cpu
from benchmark_sections import core_worm, differential, multimodal, refinement

__all__ = ["FIGURES", "fmt", "render", "write_page"]

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
    "gpu": gpu,
    "memory_cpu": memory_cpu,
    "mapping": mapping,
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
