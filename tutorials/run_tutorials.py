"""Execute the tutorial notebooks and write their outputs back into them.

The notebooks are the source; this script refreshes the outputs that are committed with them. Run it from the
repository root after changing a notebook or the package (alone on the machine, so the printed timings mean
something):

    OMP_NUM_THREADS=1 python tutorials/run_tutorials.py            # all notebooks
    OMP_NUM_THREADS=1 python tutorials/run_tutorials.py 02_cite_seq  # one notebook
    OMP_NUM_THREADS=1 python tutorials/run_tutorials.py --check      # execute, do not write back

Each notebook runs in a fresh ``python3`` kernel whose working directory is a temporary folder, so the files a
tutorial writes (models, CSV exports) never land in the checkout. The script prints the total time of each
notebook and its slowest cells; any error stops it with a non-zero exit status. CI does not use this script:
``pytest -m tutorial`` (tests/test_tutorials.py) executes the notebooks the same way without writing back.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbclient
import nbformat

TUTORIALS = Path(__file__).resolve().parent
#: Longest a single cell may run (seconds); the notebook as a whole must also stay under this.
CELL_TIMEOUT = 300


def _cell_seconds(cell: nbformat.NotebookNode) -> float:
    timing = cell.get("metadata", {}).get("execution", {})
    try:
        start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return float("nan")
    return (end - start).total_seconds()


def execute(path: Path, *, write: bool) -> float:
    """Execute one notebook; return its wall time in seconds. Writes the outputs back when ``write``."""
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="scamort_tutorial_") as workdir:
        client = nbclient.NotebookClient(
            notebook,
            timeout=CELL_TIMEOUT,
            kernel_name="python3",
            record_timing=True,
            resources={"metadata": {"path": workdir}},
        )
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    slowest = sorted(code_cells, key=_cell_seconds, reverse=True)[:3]
    print(f"{path.name}: {seconds:.0f} s; slowest cells:")
    for cell in slowest:
        print(f"  {_cell_seconds(cell):6.1f} s  [{cell.execution_count}] {cell.source.splitlines()[0][:80]}")
    if write:
        for cell in notebook.cells:  # timestamps would only add noise to the diffs
            cell.get("metadata", {}).pop("execution", None)
        nbformat.write(notebook, path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (with or without .ipynb); default: all")
    parser.add_argument("--check", action="store_true", help="execute without writing the outputs back")
    args = parser.parse_args(argv)
    if "OMP_NUM_THREADS" in os.environ:
        # numba (scanpy's neighbours/UMAP) would otherwise reset the OpenMP thread count torch shares.
        os.environ.setdefault("NUMBA_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    paths = sorted(TUTORIALS.glob("*.ipynb"))
    if args.names:
        wanted = {name.removesuffix(".ipynb") for name in args.names}
        paths = [path for path in paths if path.stem in wanted]
        missing = wanted - {path.stem for path in paths}
        if missing:
            parser.error(f"no such notebook: {', '.join(sorted(missing))}")
    slow = []
    for path in paths:
        seconds = execute(path, write=not args.check)
        if seconds >= CELL_TIMEOUT:
            slow.append(f"{path.name} took {seconds:.0f} s (limit {CELL_TIMEOUT} s)")
    for message in slow:
        print(message, file=sys.stderr)
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
