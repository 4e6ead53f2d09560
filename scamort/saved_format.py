"""Whole-file validation of a saved model: the schema of ``model.json`` and the tensors of ``weights.pt``.

A damaged file (cut short, edited, replaced by text) is refused with one sentence that names the file
and what is wrong, before any of it is used, instead of a json, torch or pickle message from deep
inside.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from scamort.data.modality import Modality
from scamort.errors import InputError

__all__ = ["read_spec", "read_weights", "validate_spec"]

_ADVICE = "the file is damaged or not scamort's: save the model again (or restore the folder from a backup)"

_NONE = type(None)
_NUMBER = (int, float)

#: Entries of model.json: name -> allowed types (bool excluded from numbers separately).
_SPEC: dict[str, tuple[type, ...]] = {
    "format_version": (int,),
    "scamort_version": (str,),
    "init_params": (dict,),
    "registry": (dict,),
    "history": (dict, _NONE),
    "split": (dict,),
    "is_trained": (bool,),
}
_INIT_REQUIRED: dict[str, tuple[type, ...]] = {
    "layer": (str, _NONE),
    "batch_key": (str, _NONE),
    "labels_key": (str, _NONE),
    "categorical_covariate_keys": (list,),
    "continuous_covariate_keys": (list,),
    "n_latent": (int,),
    "n_hidden": (int,),
    "n_layers": (int,),
    "dropout_rate": _NUMBER,
    "likelihood": (str,),
    "dispersion": (str,),
    "seed": (int,),
    "modality_dropout": _NUMBER,
}
_INIT_OPTIONAL: dict[str, tuple[type, ...]] = {
    "modalities": (dict,),
    "alignment_weight": _NUMBER,
    "library_heads": (bool,),
    "n_private_latent": (dict,),
    "mixing_weight": _NUMBER,
    "panel_mixing_weight": _NUMBER,
    "query_mapping": (dict,),
    "label_weight": _NUMBER,
    "label_gradient": (bool,),
}
_REGISTRY: dict[str, tuple[type, ...]] = {
    "modalities": (list,),
    "batch_key": (str, _NONE),
    "batch_categories": (list,),
    "labels_key": (str, _NONE),
    "label_categories": (list,),
    "categorical_covariates": (list,),
    "continuous_covariate_keys": (list,),
}


def _type_ok(value: object, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in kinds:
        return False  # True is an int to Python, not to a saved model
    return isinstance(value, kinds)


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join("null" if k is _NONE else k.__name__ for k in kinds)


def _check_entries(
    mapping: dict, schema: dict[str, tuple[type, ...]], where: str, *, required: bool = True
) -> str | None:
    for key, kinds in schema.items():
        if key not in mapping:
            if required:
                return f"it lacks {where}{key!r}"
            continue
        if not _type_ok(mapping[key], kinds):
            return f"{where}{key!r} is {type(mapping[key]).__name__}, not {_names(kinds)}"
    return None


def _all_strings(values: object) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)


def _check_registry(registry: dict) -> str | None:
    problem = _check_entries(registry, _REGISTRY, "registry ")
    if problem:
        return problem
    if not registry["modalities"]:
        return "registry 'modalities' is empty"
    known = {f.name for f in fields(Modality)}
    for i, entry in enumerate(registry["modalities"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            return f"registry modality {i} has no name"
        if not _all_strings(entry.get("feature_names")) or not entry["feature_names"]:
            return f"registry modality {entry['name']!r} has no list of feature names"
        spec = entry.get("modality")
        if not isinstance(spec, dict) or set(spec) - known:
            return f"registry modality {entry['name']!r} has an unreadable description"
        try:
            Modality(**spec)
        except (TypeError, ValueError) as exc:
            return f"registry modality {entry['name']!r} is invalid: {' '.join(str(exc).split()).rstrip('.')}"
    for key in ("batch_categories", "label_categories", "continuous_covariate_keys"):
        if not _all_strings(registry[key]):
            return f"registry {key!r} is not a list of strings"
    for pair in registry["categorical_covariates"]:
        is_pair = isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
        if not (is_pair and _all_strings(pair[1])):
            return "registry 'categorical_covariates' is not a list of [key, categories]"
    if not isinstance(registry.get("query_alignment", False), bool):
        return "registry 'query_alignment' is not true or false"
    scaling = registry.get("continuous_covariate_scaling", [])
    if not (
        isinstance(scaling, list)
        and all(isinstance(p, list) and len(p) == 2 and all(_type_ok(v, _NUMBER) for v in p) for p in scaling)
    ):
        return "registry 'continuous_covariate_scaling' is not a list of [mean, sd]"
    return None


def validate_spec(spec: object) -> str | None:
    """What is wrong with a parsed ``model.json`` (the part after its format version), or None."""
    if not isinstance(spec, dict):
        return f"it holds a JSON {type(spec).__name__}, not an object"
    problem = _check_entries(spec, _SPEC, "")
    if problem:
        return problem
    init = spec["init_params"]
    problem = _check_entries(init, _INIT_REQUIRED, "init_params ") or _check_entries(
        init, _INIT_OPTIONAL, "init_params ", required=False
    )
    if problem:
        return problem
    for key in ("categorical_covariate_keys", "continuous_covariate_keys"):
        if not _all_strings(init[key]):
            return f"init_params {key!r} is not a list of strings"
    problem = _check_registry(spec["registry"])
    if problem:
        return problem
    history = spec["history"]
    if history is not None:
        lengths = {len(v) if isinstance(v, list) else -1 for v in history.values()}
        if -1 in lengths or len(lengths) > 1:
            return "'history' is not a table of equal-length columns"
    for key, value in spec["split"].items():
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            return f"split {key!r} is not a list of cell positions"
    return None


def read_spec(path: Path) -> dict[str, Any]:
    """Parse ``model.json``; refuse a file that is not JSON (cut short, binary) in one sentence."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not text (it holds binary data); {_ADVICE}.") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        where = "it is empty" if not text.strip() else f"it breaks off or is malformed at line {exc.lineno}"
        raise InputError(f"{path} is not valid JSON ({where}); {_ADVICE}.") from None
    if not isinstance(spec, dict):
        kind = type(spec).__name__
        raise InputError(f"{path} holds a JSON {kind}, not a saved model's description; {_ADVICE}.")
    return spec


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load ``weights.pt`` as a dict of named tensors; refuse anything else in one sentence."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        size = path.stat().st_size
        what = "is empty" if size == 0 else f"cannot be read ({size} bytes: cut short, or not a weights file)"
        raise InputError(f"{path} {what}; {_ADVICE}.") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise InputError(f"{path} does not hold named tensors (not scamort's weights file); {_ADVICE}.")
    return state
