"""The shape of the code: no import cycle inside ``scamort``, no module over 500 lines, and no public
docstring quoting a measured figure (figures go in ``benchmarks/README.md`` and the result JSON).

Each check is a pure function with its own test on examples, so that a broken detector fails too.
"""

from __future__ import annotations

import ast
import inspect
import re
import types
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import scamort
import scamort.differential

PACKAGE = Path(scamort.__file__).parent
MAX_LINES = 500


# ------------------------------------------------------------------------------------- import graph
def module_name(path: Path, root: Path = PACKAGE) -> str:
    """``scamort/data/cell_data.py`` -> ``scamort.data.cell_data``; ``__init__.py`` names the package."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package modules one import statement loads explicitly (``from a import b`` loads ``a.b`` when
    that is a module, else ``a``)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if node.level:  # relative: resolve against the importing module's package
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        source = ".".join([*base, node.module] if node.module else base)
    else:
        source = node.module or ""
    targets = set()
    for alias in node.names:
        candidate = f"{source}.{alias.name}"
        if candidate in known:
            targets.add(candidate)
        elif source in known:
            targets.add(source)
    return targets


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere: at module level, inside functions and under
    ``if TYPE_CHECKING:`` alike (a type-only cycle is still a cycle of concepts)."""
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= _imported(node, module, path.name == "__init__.py", known)
        graph[module] = edges - {module}
    return graph


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` for each strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_through(graph, component) for component in components]


def _cycle_through(graph: Mapping[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle from the component's first module back to it (breadth-first)."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & members):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if target not in parents:
                    parents[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def test_cycle_finder_finds_and_names_cycles(tmp_path: Path) -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    two = find_cycles({"a": {"b"}, "b": {"a"}, "x": {"y"}, "y": {"x", "a"}})
    assert two == [["a", "b", "a"], ["x", "y", "x"]]
    # The graph sees function-level, TYPE_CHECKING and relative imports.
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "one.py").write_text("def f():\n    from pkg import two\n")
    (package / "two.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .three import X\n"
    )
    (package / "three.py").write_text("import pkg.one\nX = 1\n")
    graph = import_graph(package)
    assert graph["pkg.one"] == {"pkg.two"}
    assert graph["pkg.two"] == {"pkg.three"}
    assert find_cycles(graph) == [["pkg.one", "pkg.two", "pkg.three", "pkg.one"]]


def test_no_import_cycle_inside_the_package() -> None:
    graph = import_graph()
    assert graph.get("scamort.model"), "the graph found no imports"
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


# ------------------------------------------------------------------------------------- module size
def test_no_module_over_500_lines() -> None:
    """Every module of the package, and every benchmark script and its parts."""
    files = [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "benchmarks").glob("*.py")]
    sizes = {
        str(p.relative_to(PACKAGE.parent)): len(p.read_text(encoding="utf-8").splitlines()) for p in files
    }
    assert len(sizes) > 20
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"files over {MAX_LINES} lines (split them by concept): {too_long}"


# ------------------------------------------------------------------------------------- measured figures
_NUMBER = r"(?<![\w.])-?\d+(?:[.,]\d+)*"
_DECIMAL = r"(?<![\w.])-?\d+\.\d+"
_METRICS = (
    r"ARI|NMI|ASW|AUROC|AUC|F1|ECE|LISI|kBET|silhouette|accuracy|ELBO|IWELBO|NLL|log[- ]likelihood|"
    r"marginal LL|marginal log-likelihood|held-out LL"
)
#: What a quoted measurement looks like. A default (``n_latent=10``, ``lr=1e-3``), a shape
#: (``(n_cells, n_latent)``, ``2 × n_samples × n_features``), a constant (``1e4`` counts per cell) or a
#: formula has no unit of time or throughput, no metric name beside a decimal and no comparison.
MEASURED_FIGURE = re.compile(
    "|".join(
        [
            # a duration: "in 92 s", "0.49 s/epoch", "~1-2 min", "3.5 ms", "2 hours"
            rf"{_NUMBER}(?:\s*[-–]\s*\d+(?:\.\d+)?)?\s?(?:s|sec|secs|seconds?|ms|min|mins|minutes?|h|hours?)"
            r"(?:/epoch|/step|\s+per\s+(?:epoch|step))?(?![\w'’])",
            # a throughput: "25k cells/s", "7.6k cells per second", "350 GFLOP/s", "12 it/s"
            rf"{_NUMBER}\s?[kKM]?\s*(?:cells|genes|steps|it|samples|[GMT]?FLOPS?)\s*(?:/\s*s(?:ec)?\b|per\s+second)",
            # a log-likelihood in nats: "-142.7 nats"
            rf"{_NUMBER}\s*nats?\b",
            # a speed-up or ratio: "2.1x faster", "1.5-2.1× the dense version", "a 3x speed-up"
            rf"{_NUMBER}\s?[x×]\s+(?:faster|slower|quicker|speed-?ups?|more|less|fewer|higher|lower)\b",
            rf"{_DECIMAL}\s?[x×](?:\s+the\b|(?![\w(]))",
            r"\bspeed-?up of\s+\d",
            # a metric with its value: "ARI 0.43", "ARI / NMI 0.384 / 0.567", "held-out ELBO -149.8"
            rf"\b(?:{_METRICS})\b[^.;\n]{{0,40}}?{_DECIMAL}",
            rf"(?:{_METRICS})\s*(?:of|=|:|was|is)\s*-\d{{2,}}",
            # two measurements compared: "0.69 vs 0.44", "-95.7 at 2048 vs -97.0 at 128"
            rf"{_DECIMAL}[^.;\n]{{0,30}}\bvs\.?\s+-?\d+\.\d+",
            # a relative difference: "1-11% lower held-out ELBO", "30 % faster"
            r"\d+(?:\.\d+)?\s?%\s*(?:lower|higher|faster|slower|better|worse|more|less|fewer|smaller|larger)\b",
        ]
    ),
    re.IGNORECASE,
)

QUOTES_A_FIGURE = [
    "Trains at 0.49 s/epoch on the worm data.",
    "about 25k cells/s at batch 128",
    "clusters with ARI 0.43 against the labels",
    "held-out marginal LL of -142.7 nats",
    "the sparse path is 2.1x faster",
    "1.5-2.1× the dense version",
    "the whole tutorial runs in 92 s",
    "Leiden ARI / NMI 0.384 / 0.567 vs 0.381 / 0.569",
    "held-out ELBO -149.8 after 100 epochs",
    "-95.7 at 2048 vs -97.0 at 128 after 10 epochs",
    "1-11% lower held-out ELBO than batch 128's",
    "own-group share of neighbours 0.69 vs 0.44",
    "takes ~1-2 min on two cores",
    "paired ARI 0.593 trained jointly",
    "7.6k cells per second",
    "a 3x speed-up over the dense loop",
]
STATES_BEHAVIOUR = [
    "n_latent=10 latent dimensions",
    "AdamW learning rate, lr=1e-3 for batches of 128 cells",
    "Array of shape ``(n_cells, n_latent)``.",
    "Counts per cell of the output (``1e4``: counts per 10k)",
    "about ``2 × n_samples × n_features`` float32 values",
    "``(1 - P(background)) × foreground mean``",
    "default ``min(400, max(10, 8e6 / n_cells))``",
    "decays by 0.95 per step",
    "mean raw count below 0.01",
    "10% of the cells held out",
    "the ELBO (KL weight 1) of refined posteriors",
    "Steps after which to record each cell's ELBO (0 = the encoders' posterior).",
    "a ``2**0.25 ≈ 1.19``-fold change",
    "``max_seconds``: stop after the first epoch that ends past it",
    "``delta`` of 0.25 in log2 fold change",
    "a gene-batch dispersion; shape (n_genes, n_batch)",
    "``n_samples`` draws, ``(n_samples, n_cells, n_features)``",
    "xs of 5 elements",
    "10x Genomics multiome data",
    "a 2 × 2 table",
]


@pytest.mark.parametrize("text", QUOTES_A_FIGURE)
def test_figure_detector_flags_measurements(text: str) -> None:
    assert MEASURED_FIGURE.search(text), f"not flagged: {text!r}"


@pytest.mark.parametrize("text", STATES_BEHAVIOUR)
def test_figure_detector_passes_defaults_shapes_and_constants(text: str) -> None:
    match = MEASURED_FIGURE.search(text)
    assert match is None, f"flagged {match.group(0)!r} in {text!r}"


PUBLIC_MODULES: dict[str, types.ModuleType] = {
    "scamort": scamort,
    "scamort.tl": scamort.tl,
    "scamort.pl": scamort.pl,
    "scamort.datasets": scamort.datasets,
    "scamort.differential": scamort.differential,
}


def public_docstrings() -> Iterator[tuple[str, str]]:
    """``(qualified name, docstring)`` of every public module, its ``__all__`` names and, for classes,
    their public methods and properties."""
    seen: set[int] = set()
    for module_path, module in PUBLIC_MODULES.items():
        yield module_path, module.__doc__ or ""
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, types.ModuleType) or id(obj) in seen:
                continue
            seen.add(id(obj))
            yield f"{module_path}.{name}", inspect.getdoc(obj) or ""
            if inspect.isclass(obj):
                for attribute, member in vars(obj).items():
                    if attribute.startswith("_") and attribute != "__init__":
                        continue
                    target = member.fget if isinstance(member, property) else member
                    target = getattr(target, "__func__", target)
                    if callable(target) or isinstance(member, property):
                        yield f"{module_path}.{name}.{attribute}", inspect.getdoc(target) or ""


def test_public_docstrings_quote_no_measured_figure() -> None:
    documented = dict(public_docstrings())
    assert (
        "scamort.Model.train" in documented and "scamort.differential.differential_expression" in documented
    )
    found = {
        name: [m.group(0) for m in MEASURED_FIGURE.finditer(doc)]
        for name, doc in documented.items()
        if MEASURED_FIGURE.search(doc)
    }
    assert not found, (
        "docstrings state behaviour; put measured figures in benchmarks/README.md instead: " + repr(found)
    )
