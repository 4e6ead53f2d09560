"""The public API follows the scverse conventions (like scanpy's package-structure test).

- Every public name (``scamort.__all__``, ``scamort.tl``, ``scamort.pl``, ``scamort.datasets``,
  ``scamort.differential``) has a numpydoc docstring whose first line is a one-sentence summary.
- Every public function, method and class that takes parameters lists each of them in a
  ``Parameters`` section (``a, b`` on one line documents both; ``*args`` / ``**kwargs`` too).
- Public functions that take an AnnData take it first, as ``adata``.
- Tools that write into an AnnData (they return ``AnnData | None``, scanpy's copy convention) take
  ``key_added`` and ``copy``.
- :class:`scamort.Model`'s public methods and properties are documented by the same rules.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import scamort
import scamort.differential

PUBLIC_MODULES: dict[str, types.ModuleType] = {
    "scamort": scamort,
    "scamort.tl": scamort.tl,
    "scamort.pl": scamort.pl,
    "scamort.datasets": scamort.datasets,
    "scamort.pp": scamort.pp,
    "scamort.differential": scamort.differential,
}

_SECTION = re.compile(r"^(?P<title>[A-Z][A-Za-z ]+)\n-{3,}$", re.MULTILINE)


# ------------------------------------------------------------------------------------------ helpers
def _public_names(module: types.ModuleType) -> list[str]:
    return list(getattr(module, "__all__", []))


def _public_objects() -> Iterator[tuple[str, Any]]:
    """``(qualified name, object)`` for every public name of every public module, without duplicates."""
    seen: set[int] = set()
    for module_name, module in PUBLIC_MODULES.items():
        for name in _public_names(module):
            obj = getattr(module, name)
            if isinstance(obj, str | int | float | tuple | dict | frozenset) or id(obj) in seen:
                continue  # constants (e.g. __version__, MODES) carry no docstring of their own
            seen.add(id(obj))
            yield f"{module_name}.{name}", obj


def _model_members() -> Iterator[tuple[str, Any]]:
    """Public methods and properties defined on :class:`scamort.Model` (functions, not descriptors)."""
    for name, member in vars(scamort.Model).items():
        if name.startswith("_"):
            continue
        if isinstance(member, classmethod | staticmethod):
            member = member.__func__
        elif isinstance(member, property):
            member = member.fget
        if callable(member):
            yield f"scamort.Model.{name}", member


def _sections(doc: str) -> dict[str, str]:
    """Numpydoc sections of a cleaned docstring: title -> body."""
    matches = list(_SECTION.finditer(doc))
    out = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(doc)
        out[match["title"].strip()] = doc[match.end() : end]
    return out


def documented_parameters(doc: str) -> set[str]:
    """Names listed in the ``Parameters`` (and ``Other Parameters``) sections of a numpydoc docstring.

    Entries are the unindented lines of the section: ``name``, ``name : type`` or ``a, b : type``.
    """
    names: set[str] = set()
    sections = _sections(doc)
    for title in ("Parameters", "Other Parameters"):
        for line in sections.get(title, "").splitlines():
            if not line.strip() or line.startswith((" ", "\t")):
                continue
            head = line.split(" : ")[0]
            names.update(part.strip().lstrip("*") for part in head.split(",") if part.strip())
    return names


def signature_parameters(obj: Callable[..., Any]) -> list[inspect.Parameter]:
    """Parameters a caller passes (without ``self`` / ``cls``)."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    if inspect.isclass(obj) and target is object.__init__:
        return []
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # builtins, e.g. an exception's inherited __init__
        return []
    params = list(signature.parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    return params


def _takes_anndata(param: inspect.Parameter) -> bool:
    return param.name == "adata" or "AnnData" in str(param.annotation)


def _is_function(obj: Any) -> bool:
    return inspect.isfunction(obj)


def _ids(pairs: list[tuple[str, Any]]) -> list[str]:
    return [name for name, _ in pairs]


PUBLIC = list(_public_objects())
MODEL_MEMBERS = list(_model_members())
DOCUMENTED = PUBLIC + MODEL_MEMBERS
FUNCTIONS = [(name, obj) for name, obj in PUBLIC if _is_function(obj)]
WITH_PARAMETERS = [
    (name, obj)
    for name, obj in DOCUMENTED
    if not inspect.ismodule(obj) and not (inspect.isclass(obj) and issubclass(obj, BaseException))
]
TOOLS = [(f"scamort.tl.{name}", getattr(scamort.tl, name)) for name in _public_names(scamort.tl)]


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("module_name", list(PUBLIC_MODULES))
def test_all_names_exist_and_are_public(module_name: str) -> None:
    module = PUBLIC_MODULES[module_name]
    names = _public_names(module)
    assert names, f"{module_name} has no __all__"
    assert len(names) == len(set(names)), f"{module_name}.__all__ has duplicates"
    missing = [name for name in names if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names missing attributes: {missing}"
    private = [name for name in names if name.startswith("_") and name != "__version__"]
    assert not private, f"{module_name}.__all__ exports private names: {private}"


def test_public_modules_are_exported() -> None:
    for name in ("datasets", "pl", "tl"):
        assert name in scamort.__all__


@pytest.mark.parametrize(("name", "obj"), DOCUMENTED, ids=_ids(DOCUMENTED))
def test_docstring_has_summary_line(name: str, obj: Any) -> None:
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    summary = doc.splitlines()[0].strip()
    assert summary, f"{name}: the docstring must start with a summary line"
    assert summary.endswith((".", ":")), f"{name}: the summary line should be a sentence: {summary!r}"
    if len(doc.splitlines()) > 1:
        assert not doc.splitlines()[1].strip(), f"{name}: leave a blank line after the summary line"


@pytest.mark.parametrize(("name", "obj"), WITH_PARAMETERS, ids=_ids(WITH_PARAMETERS))
def test_every_parameter_is_documented(name: str, obj: Any) -> None:
    params = [p.name for p in signature_parameters(obj)]
    if not params:
        return
    doc = inspect.getdoc(obj) or ""
    assert "Parameters" in _sections(doc), f"{name} takes {params} but has no Parameters section"
    undocumented = [p for p in params if p not in documented_parameters(doc)]
    assert not undocumented, f"{name}: parameters missing from the Parameters section: {undocumented}"
    unknown = sorted(documented_parameters(doc) - set(params))
    assert not unknown, f"{name}: the Parameters section names parameters it does not take: {unknown}"


@pytest.mark.parametrize(("name", "obj"), FUNCTIONS, ids=_ids(FUNCTIONS))
def test_anndata_comes_first_as_adata(name: str, obj: Any) -> None:
    params = signature_parameters(obj)
    takes = [p.name for p in params if _takes_anndata(p)]
    if not takes or name.startswith("scamort.differential."):
        # differential_expression(model, adata=None, ...) is a model query (it backs the
        # Model.differential_expression method), like Model.get_latent_representation(adata).
        return
    if params[0].name == "adatas":  # several AnnData objects, as anndata.concat(adatas) takes them
        return
    assert params[0].name == "adata", f"{name} takes an AnnData ({takes}) but not first as `adata`"


@pytest.mark.parametrize(("name", "obj"), TOOLS, ids=_ids(TOOLS))
def test_tools_writing_into_anndata_have_key_added_and_copy(name: str, obj: Any) -> None:
    returns = str(inspect.signature(obj).return_annotation)
    if "AnnData" not in returns:
        return  # writes elsewhere (e.g. a file), returns something else
    params = {p.name: p for p in signature_parameters(obj)}
    for required in ("key_added", "copy"):
        assert required in params, f"{name} writes into adata but has no `{required}` parameter"
        assert params[required].kind is inspect.Parameter.KEYWORD_ONLY, (
            f"{name}: make `{required}` keyword-only"
        )
    assert params["copy"].default is False, f"{name}: `copy` must default to False"


def test_documented_parameters_parser() -> None:
    doc = inspect.cleandoc(
        """Summary.

        Parameters
        ----------
        adata
            Data.
        lr, weight_decay
            Two at once.
        color : str
            Typed.
        **kwargs
            More.

        Returns
        -------
        thing
            Not a parameter.
        """
    )
    assert documented_parameters(doc) == {"adata", "lr", "weight_decay", "color", "kwargs"}
