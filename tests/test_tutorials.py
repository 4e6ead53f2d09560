"""Execute every tutorial notebook; any error in any cell fails the test.

Marked ``tutorial``: run them with ``pytest -m tutorial`` (several minutes; CI runs this as its own step).
Each notebook runs in a fresh ``python3`` kernel with a temporary working directory, so the files it writes
(models, CSV exports) never land in the checkout. The executed copy is not written back.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
#: Per-notebook limit: each tutorial must finish well within 5 minutes on 2 CPU cores.
TIMEOUT_SECONDS = 300

pytestmark = pytest.mark.tutorial


def test_tutorials_exist() -> None:
    names = {path.name for path in NOTEBOOKS}
    assert {"01_rna_quickstart.ipynb", "02_cite_seq.ipynb", "03_multiome_unpaired.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_tutorial_runs(path: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if not re.search(r"(?<!not )\btutorial\b", request.config.getoption("markexpr") or ""):
        pytest.skip("tutorials run only when selected: pytest -m tutorial")
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
