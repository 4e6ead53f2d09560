"""Sphinx configuration for the scamort documentation.

The build is offline: no intersphinx inventories are fetched, and references to types of other packages
(numpy, pandas, torch, AnnData, ...) that cannot resolve without them are listed in ``nitpick_ignore_regex``.
Before Sphinx reads any source, three generated inputs are (re)written by scripts under ``docs/scripts/``:
the benchmarks page from ``benchmarks/results/*.json``, the CLI's ``--help`` texts from its argparse parser,
and copies of the tutorial notebooks (rendered with their stored outputs, never executed here).
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "scripts"))

import benchmark_tables  # noqa: E402
import cli_help  # noqa: E402
import tutorials_copy  # noqa: E402

from scamort import __version__  # noqa: E402

benchmark_tables.write_page(ROOT / "benchmarks" / "results", DOCS / "benchmarks.md", DOCS / "_generated")
cli_help.write_help_texts(DOCS / "_generated" / "cli")
tutorials_copy.copy_notebooks(ROOT / "tutorials", DOCS / "tutorials")

project = "scamort"
author = "the scamort developers"
copyright = "2026, the scamort developers"
version = release = __version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
]

exclude_patterns = ["_build", "_generated/**/*.md", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
html_static_path = ["_static"]
source_suffix = {
    ".rst": "restructuredtext",
    ".md": "myst-nb",
    ".ipynb": "myst-nb",
}  # .rst first: autosummary writes stubs with it

# Notebooks are rendered with the outputs committed with them; CI executes them separately.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "substitution"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]

autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "undoc-members": False, "inherited-members": False}
autodoc_member_order = "groupwise"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"
# Annotations are strings (``from __future__ import annotations``) naming classes imported only for type
# checking; these map them to the documented objects (see "Results and internals" in the API reference).
autodoc_type_aliases = {
    "AmortizationGap": "scamort.amortization_gap.AmortizationGap",
    "RefinementResult": "scamort.refine.RefinementResult",
    "_LatentModel": "scamort.Model",
}
autoclass_content = "class"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_param = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # dataclass fields are documented once, as members
napoleon_preprocess_types = False

html_theme = "furo"
html_title = f"scamort {release}"
html_logo = None
html_theme_options = {"source_repository": "", "navigation_with_keys": True}
pygments_style = "default"
pygments_dark_style = "monokai"

# Warnings are errors (-W) and every cross-reference must resolve (-n). Without network access there are no
# intersphinx inventories, so names of OTHER packages cannot resolve; they, and only they, are ignored here.
# scamort's own names are never listed: a reference to one must point at a documented object.
nitpicky = True
_EXTERNAL_MODULES = (
    "numpy|np|pandas|pd|scanpy|sc|torch|anndata|ad|mudata|md|scipy|sparse|matplotlib|mpl|plt|sklearn|h5py|pathlib"
    "|collections|typing|typing_extensions|os|argparse|logging|io|types|abc|concurrent|numbers|datetime"
)
_EXTERNAL_NAMES = (
    "AnnData|MuData|DataFrame|Series|Index|ndarray|Tensor|Figure|Axes|Path|PathLike|Generator|Module"
    "|Sequence|Mapping|MutableMapping|Iterable|Iterator|Callable|Any|Literal|Union|Optional|Self|Hashable"
    "|ArrayLike|NDArray|dtype|device|spmatrix|csr_matrix|csr_array|sparray|Namespace|Logger|Handler"
    "|TextIO|BinaryIO|Collection|TypeVar|ClassVar|Final|NoReturn|Never|SubplotBase|Colormap"
)
_BUILTINS = (
    "int|float|str|bool|bytes|object|list|dict|tuple|set|frozenset|type|slice|range|complex|None|Ellipsis"
    "|NotImplemented|Exception|ValueError|TypeError|KeyError|RuntimeError|OSError|FileNotFoundError"
    "|FileExistsError|IndexError|Warning|UserWarning|RuntimeWarning|BaseException|ImportError|IOError"
    "|callable|iterable|optional|default|array-like|array_like|sequence|mapping|scalar|path-like"
)
nitpick_ignore_regex = [
    (r"py:(class|obj|func|meth|attr|data|exc|mod)", rf"(~?)({_EXTERNAL_MODULES})(\..+)?"),
    (r"py:(class|obj|data|exc)", rf"({_EXTERNAL_NAMES})"),
    (r"py:(class|obj|data|exc|func)", rf"({_BUILTINS})"),
]


# A private protocol in an annotation names what a function needs from a model; the public class that
# satisfies it is the documented target.
_PRIVATE_TARGETS = {"scamort.export._LatentModel": "scamort.Model", "_LatentModel": "scamort.Model"}


def _private_target(node) -> str | None:
    target = node.get("reftarget", "")
    if target in _PRIVATE_TARGETS:
        return _PRIVATE_TARGETS[target]
    module = node.get("py:module") or ""
    return _PRIVATE_TARGETS.get(f"{module}.{target}")


def _resolve_private_protocols(app, env, node, contnode):
    target = _private_target(node)
    if target is None:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, "class", target, node, contnode)


def setup(app):
    app.connect("missing-reference", _resolve_private_protocols)
