"""Saving and loading models: a JSON spec and a tensor file, written atomically, checked on load."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from scamort._version import __version__
from scamort.errors import InputError

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
    """
    target = Path(dir_path)
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

    A previous model at the target stays in place until the new one is complete, and is put back if
    the final rename fails or is interrupted.
    """
    target = Path(dir_path)
    check_save_target(target, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
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
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it owner-only; a model folder is a plain folder
    try:
        (staging / SPEC_FILE).write_text(json.dumps(spec, indent=1))
        cpu_state = {k: v.detach().cpu() for k, v in state_dict.items()}
        torch.save(cpu_state, staging / WEIGHTS_FILE)
        if target.exists():
            retired = target.with_name(f".{target.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(target, retired)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(retired, target)
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load(dir_path: str | Path) -> SavedModel:
    """Read a model directory written by :func:`save`, checking its format version."""
    path = Path(dir_path)
    spec_path = path / SPEC_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(f"{path} is not a saved scamort model (no {SPEC_FILE} in it).")
    spec = json.loads(spec_path.read_text())
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
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{path} is not a complete saved scamort model (no {WEIGHTS_FILE} in it).")
    try:
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{weights} cannot be read ({first_line}); the file is damaged or not scamort's: save the "
            "model again."
        ) from None
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
