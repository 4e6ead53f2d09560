"""Cheap checks on the documentation's sources (the Sphinx build itself runs in ``.ci/run``, not here).

The README stays a short landing page whose test command is, word for word, the one CI runs; every relative
link in it points at a file of the repository; and every user-guide page in ``docs/guide/`` is reachable from
the guide's table of contents.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI_SCRIPT = ROOT / ".ci" / "run"
GUIDE_INDEX = ROOT / "docs" / "user_guide.md"
TEST_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[test]" && pytest'
DEMO_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[test]" && scamort demo'
MAX_README_LINES = 100


def _toctree_blocks(text: str) -> list[tuple[set[str], list[str]]]:
    """Each ```{toctree} block of a MyST file: its options and its entries."""
    blocks = []
    for body in re.findall(r"^```\{toctree\}[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        lines = [line.strip() for line in body.splitlines()]
        options = {line.split(":")[1] for line in lines if line.startswith(":")}
        entries = [line for line in lines if line and not line.startswith(":")]
        blocks.append((options, entries))
    return blocks


def test_readme_is_a_short_landing_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; keep it to {MAX_README_LINES}"


def test_readme_test_command_is_the_one_ci_runs() -> None:
    readme_lines = [line.strip() for line in README.read_text().splitlines()]
    ci_lines = [line.strip() for line in CI_SCRIPT.read_text().splitlines()]
    assert TEST_COMMAND in readme_lines, "README.md lost its test command line"
    assert DEMO_COMMAND in readme_lines, "README.md lost its demo command line"
    assert TEST_COMMAND in ci_lines, ".ci/run no longer runs the README's test command"


def test_readme_relative_links_exist() -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    relative = [t for t in targets if not re.match(r"^[a-z]+://", t)]
    assert relative, "README.md links into the docs"
    missing = [t for t in relative if not (ROOT / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_toctree_parser_reads_options_and_entries() -> None:
    text = "# T\n\n```{toctree}\n:maxdepth: 1\n:glob:\n\nguide/model\nguide/*\n```\n"
    assert _toctree_blocks(text) == [({"maxdepth", "glob"}, ["guide/model", "guide/*"])]


def test_every_guide_page_is_in_the_guide_toctree() -> None:
    pages = sorted(
        path.relative_to(GUIDE_INDEX.parent).with_suffix("").as_posix()
        for path in (ROOT / "docs" / "guide").glob("*.md")
    )
    assert pages, "docs/guide/ holds the user-guide pages"
    blocks = _toctree_blocks(GUIDE_INDEX.read_text())
    assert blocks, "docs/user_guide.md has a toctree"
    explicit = {entry for _, entries in blocks for entry in entries if not any(c in entry for c in "*?[")}
    globs = [entry for options, entries in blocks if "glob" in options for entry in entries if "*" in entry]
    assert "guide/*" in globs, "the guide's toctree must end with the glob guide/* so new pages appear"
    unreachable = [p for p in pages if p not in explicit and not any(fnmatch.fnmatch(p, g) for g in globs)]
    assert not unreachable, f"user-guide pages missing from docs/user_guide.md's toctree: {unreachable}"
    listed_missing = [e for e in explicit if e.startswith("guide/") and e not in pages]
    assert not listed_missing, f"docs/user_guide.md lists pages that do not exist: {listed_missing}"


@pytest.mark.parametrize("name", ["LICENSE", "CHANGELOG.md", "CONTRIBUTING.md", ".pre-commit-config.yaml"])
def test_project_habit_files_exist(name: str) -> None:
    assert (ROOT / name).is_file()


def test_changelog_has_an_unreleased_section_and_the_current_version() -> None:
    from scamort import __version__

    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    assert f"## [{__version__}]" in text


def _benchmark_tables(monkeypatch: pytest.MonkeyPatch):
    """``docs/scripts/benchmark_tables.py``, imported as conf.py does (its folder on ``sys.path``)."""
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "docs" / "scripts"))
    return importlib.import_module("benchmark_tables")


def test_benchmarks_page_shows_every_results_file_with_its_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    tables = _benchmark_tables(monkeypatch)
    results = ROOT / "benchmarks" / "results"
    page = tables.render(results, tmp_path)
    for path in results.glob("*.json"):
        assert f"`{path.name}`" in page, f"{path.name} is missing from the benchmarks page"
    core = json.loads((results / "core_worm.json").read_text())
    for tool in ("scamort", "scvi"):
        assert f"| {tables.fmt(core['results'][tool]['heldout_elbo'])} |" in page
    images = [line.split("/")[-1] for line in page.splitlines() if line.startswith("```{figure}")]
    assert images and all((tmp_path / tables.FIGURES / name).is_file() for name in images)


def test_benchmark_cells_are_formatted_from_the_values(monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = _benchmark_tables(monkeypatch).fmt
    assert [fmt(True), fmt(None), fmt(3), fmt(-139.60031), fmt(0.0283509), fmt(29954.6)] == [
        "yes",
        "–",
        "3",
        "-139.6",
        "0.0284",
        "29,955",
    ]


def test_api_reference_lists_every_public_name() -> None:
    """docs/api/index.md names every entry of ``scamort.__all__`` and of pl/tl/pp/datasets' ``__all__``."""
    import scamort

    text = (ROOT / "docs" / "api" / "index.md").read_text()
    entries = {line.strip() for line in text.splitlines()}
    submodules = ("pl", "tl", "pp", "datasets")
    expected = [name for name in scamort.__all__ if name not in submodules]
    for module in submodules:
        expected += [f"{module}.{name}" for name in getattr(scamort, module).__all__]
    missing = [name for name in expected if name not in entries]
    assert not missing, f"public names missing from docs/api/index.md: {missing}"
