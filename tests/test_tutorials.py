"""The tutorial notebooks: committed in a clean executed state, and they run without error.

``test_tutorial_runs`` is marked ``tutorial`` and deselected by default: run it with ``pytest -m tutorial``
(a few minutes; CI runs it as its own step, with ``OMP_NUM_THREADS=1``). Each notebook runs in a fresh
``python3`` kernel with a temporary working directory, so the files it writes (models, CSV exports) never land
in the checkout; the executed copy is not written back (``tutorials/run_tutorials.py`` does that). The cheap
checks on the committed files run with the default test suite.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
#: Per-notebook limit: each tutorial must finish well within 5 minutes on 2 CPU cores.
TIMEOUT_SECONDS = 300


def _code_cells(path: Path) -> list:
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_tutorials_exist() -> None:
    names = {path.name for path in NOTEBOOKS}
    assert {"01_rna_quickstart.ipynb", "02_cite_seq.ipynb", "03_multiome_unpaired.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_committed_outputs_come_from_one_clean_run(path: Path) -> None:
    """Every code cell was executed once, top to bottom, in one kernel, and none failed."""
    cells = _code_cells(path)
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), (
        f"{path.name}: re-run it with tutorials/run_tutorials.py"
    )
    errors = [output for cell in cells for output in cell.outputs if output.output_type == "error"]
    assert not errors, errors


@pytest.mark.tutorial
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_tutorial_runs(
    path: Path, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not re.search(r"(?<!not )\btutorial\b", request.config.getoption("markexpr") or ""):
        pytest.skip("tutorials run only when selected: pytest -m tutorial")
    if "OMP_NUM_THREADS" in os.environ and "NUMBA_NUM_THREADS" not in os.environ:
        # scanpy's neighbours/UMAP run numba, whose OpenMP layer resets the OpenMP thread count that torch
        # shares to one thread per core; without this, OMP_NUM_THREADS=1 would not hold after the first graph.
        monkeypatch.setenv("NUMBA_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=TIMEOUT_SECONDS,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    print(f"{path.name}: executed in {seconds:.0f} s")
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, errors
    assert seconds < TIMEOUT_SECONDS, f"{path.name} took {seconds:.0f} s (limit {TIMEOUT_SECONDS} s)"
