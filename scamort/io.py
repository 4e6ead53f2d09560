"""Saving and loading models: a JSON spec and a tensor file, written atomically, checked on load."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from scamort._version import __version__
from scamort.errors import InputError
from scamort.paths import check_writable_folder, nearest_existing_folder
from scamort.replace_journal import recover, staged_replacement
from scamort.saved_format import read_spec, read_weights, validate_spec

__all__ = ["FORMAT_VERSION", "READABLE_FORMATS", "SavedModel", "check_save_target", "load", "save"]

#: Version of the on-disk layout; bump when a change would make old files load wrongly.
#: 2: a modality may carry a feature mask spec (``measured_key``) and its encoder the weights of
#: unmeasured features; format 1 files (no masks) load unchanged.
FORMAT_VERSION = 2
#: Formats this scamort reads.
READABLE_FORMATS = (1, 2)
SPEC_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"


@dataclass(frozen=True)
class SavedModel:
    """The contents of a saved model directory."""

    init_params: dict[str, Any]
    registry: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    history: pd.DataFrame | None
    split: dict[str, np.ndarray | None]
    is_trained: bool
    scamort_version: str


def _to_list(array: np.ndarray | None) -> list[int] | None:
    return None if array is None else np.asarray(array).tolist()


def check_save_target(dir_path: str | Path, *, overwrite: bool) -> None:
    """Refuse, before any work, a target that exists (unless ``overwrite``) or is not a saved model.

    ``overwrite`` replaces only a saved scamort model (a folder with ``model.json``) or an empty folder,
    never a file or a folder of other things.

    Raises
    ------
    FileExistsError
        If ``dir_path`` exists and may not be replaced.
    InputError
        If the folder it would be written into cannot be written.
    """
    target = Path(dir_path)
    check_writable_folder(nearest_existing_folder(target.parent), role="The model folder", path=target)
    if not target.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it.")
    if not target.is_dir():
        raise FileExistsError(f"{target} is a file, not a model folder; choose another path to save to.")
    if not (target / SPEC_FILE).is_file() and any(target.iterdir()):
        raise FileExistsError(
            f"{target} is a folder of other files, not a saved scamort model (no {SPEC_FILE}); "
            "overwrite only replaces a saved model, so choose another path to save to."
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save(
    dir_path: str | Path,
    *,
    overwrite: bool,
    init_params: dict[str, Any],
    registry: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    history: pd.DataFrame | None,
    split: dict[str, np.ndarray | None],
    is_trained: bool,
) -> None:
    """Write a model directory atomically: build it next to the target, then rename into place.

    A previous model at the target stays in place until the new one is complete. Replacing it takes two
    renames (the old model aside, the new one in); a process killed between them leaves a staging
    folder whose journal (:mod:`scamort.replace_journal`) lets the next :func:`save` or :func:`load`
    put the previous model back, or finish the replacement if the new model was already in place.
    Only folders named in such a journal are ever moved or deleted.
    """
    target = Path(dir_path)
    recover(target)
    check_save_target(target, overwrite=overwrite)
    spec = {
        "format_version": FORMAT_VERSION,
        "scamort_version": __version__,
        "torch_version": torch.__version__,
        "init_params": init_params,
        "registry": registry,
        "history": None if history is None else history.to_dict(orient="list"),
        "split": {k: _to_list(v) for k, v in split.items()},
        "is_trained": is_trained,
    }
    with staged_replacement(target) as staging:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it owner-only; a model folder is plain
        (staging / SPEC_FILE).write_text(json.dumps(spec, indent=1))
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, staging / WEIGHTS_FILE)


def load(dir_path: str | Path) -> SavedModel:
    """Read a model directory written by :func:`save`, validated as a whole.

    An interrupted replacement is recovered first (see :func:`save`). ``model.json`` must be JSON of the
    saved-model schema and ``weights.pt`` a file of named tensors (:mod:`scamort.saved_format`); their fit
    to each other (names, shapes, dtypes) is checked when the model is built.
    """
    path = Path(dir_path)
    recover(path)
    spec_path = path / SPEC_FILE
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file, not a saved scamort model folder.")
    if not spec_path.is_file():
        raise FileNotFoundError(f"{path} is not a saved scamort model (no {SPEC_FILE} in it).")
    spec = read_spec(spec_path)
    version = spec.get("format_version")
    if version not in READABLE_FORMATS:
        advice = (
            "upgrade scamort to load it"
            if isinstance(version, int) and version > FORMAT_VERSION
            else "load it with the scamort version that saved it and save it again"
        )
        raise InputError(
            f"{path} uses save format {version} (scamort {spec.get('scamort_version')}); this "
            f"scamort ({__version__}) reads formats {', '.join(map(str, READABLE_FORMATS))}: {advice}."
        )
    problem = validate_spec(spec)
    if problem is not None:
        raise InputError(
            f"{spec_path} is not a valid saved model ({problem}); the file is damaged or was edited: save "
            "the model again."
        )
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{path} is not a complete saved scamort model (no {WEIGHTS_FILE} in it).")
    state_dict = read_weights(weights)
    history = spec["history"]
    return SavedModel(
        init_params=spec["init_params"],
        registry=spec["registry"],
        state_dict=state_dict,
        history=None if history is None else pd.DataFrame(history),
        split={k: None if v is None else np.asarray(v, dtype=np.int64) for k, v in spec["split"].items()},
        is_trained=bool(spec["is_trained"]),
        scamort_version=spec["scamort_version"],
    )
