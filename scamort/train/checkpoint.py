"""Training checkpoints: everything needed to resume a run exactly, written atomically."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from scamort.data.cell_data import CellData
from scamort.errors import InputError
from scamort.paths import check_folder_target
from scamort.train.config import TrainConfig

__all__ = ["CHECKPOINT_FILE", "load_checkpoint", "run_fingerprint", "save_checkpoint", "state_dict_problem"]

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists and dicts only) to ``directory``.

    The file is written under a temporary name and renamed into place, so a run killed mid-write
    leaves the previous checkpoint intact.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".checkpoint.", dir=directory)
    os.close(handle)
    try:
        torch.save(state, temporary)
        os.replace(temporary, directory / CHECKPOINT_FILE)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _digest(*tensors: torch.Tensor | None) -> str:
    """SHA-256 of the tensors' values, shapes and dtypes (exact, device-independent)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none")
            continue
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(array.shape)}{array.dtype}".encode())
        digest.update(array.numpy().tobytes())
    return digest.hexdigest()


def run_fingerprint(module: torch.nn.Module, data: Any) -> dict[str, Any]:
    """What a checkpoint must match besides the training options: everything else that defines the run.

    The model's configuration; per modality the counts (every value and its position) and which cells
    are measured; the batch and covariate codes; and the cells' names in their order. Each part is a
    SHA-256 digest, so a checkpoint made before the batch labels were corrected, or the cells
    reordered, renamed or subset, is refused rather than resumed.

    Parameters
    ----------
    module
        The VAE (its ``config`` describes the architecture).
    data
        The cells trained on (:class:`~scamort.data.CellData`, or backed data, whose counts stay on
        disk: its covariates and cells are compared, with the number of cells).

    Returns
    -------
    dict
        Strings and numbers only.
    """
    fingerprint: dict[str, Any] = {"module": repr(module.config), "n_cells": int(data.n_cells)}
    cells = data if isinstance(data, CellData) else getattr(data, "covariates", None)
    if isinstance(cells, CellData):
        fingerprint["cells"] = _digest(cells.cell_keys)
        fingerprint["batch"] = _digest(cells.batch_index)
        fingerprint["covariates"] = _digest(cells.categorical, cells.continuous)
    in_memory = data.modalities if isinstance(data, CellData) else {}  # backed data: cells only
    for name, tensors in in_memory.items():
        fingerprint[f"counts_{name}"] = _digest(
            tensors.indptr, tensors.indices, tensors.values, tensors.present
        )
    return fingerprint


#: What a checkpoint holds, and the type of each entry.
_CHECKPOINT_ENTRIES: dict[str, type | tuple[type, ...]] = {
    "config": dict,
    "fingerprint": dict,
    "module": dict,
    "optimizer": dict,
    "torch_rng": torch.Tensor,
    "generator": torch.Tensor,
    "progress": dict,
    "stopped": bool,
}


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, validated as a whole; one sentence naming the file when it is not."""
    advice = "delete it to start over, or use another checkpoint_dir"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        size = path.stat().st_size
        what = "empty" if size == 0 else f"damaged ({size} bytes: cut short, or not a scamort checkpoint)"
        raise InputError(f"The checkpoint {path} is {what}; {advice}.") from None
    if not isinstance(state, dict):
        raise InputError(f"The checkpoint {path} is not a scamort checkpoint; {advice}.")
    for key, kind in _CHECKPOINT_ENTRIES.items():
        if not isinstance(state.get(key), kind):
            problem = "lacks" if key not in state else "has a wrong-typed"
            raise InputError(f"The checkpoint {path} {problem} entry {key!r}; {advice}.")
    optimizer = state["optimizer"]
    if not isinstance(optimizer.get("state"), dict) or not isinstance(optimizer.get("param_groups"), list):
        raise InputError(f"The checkpoint {path} has a damaged optimizer state; {advice}.")
    return state


def state_dict_problem(saved: dict[str, Any], expected: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with ``saved`` as weights for a module whose state dict is ``expected``, or None.

    Compares tensor names, shapes and dtypes, and refuses non-tensors and non-finite weights.
    """
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    if missing or extra:
        names = missing or extra
        which = "lacks" if missing else "has unexpected"
        return f"it {which} {len(names)} tensors (e.g. {names[0]!r})"
    for name, reference in expected.items():
        value = saved[name]
        if not isinstance(value, torch.Tensor):
            return f"{name!r} is a {type(value).__name__}, not a tensor"
        if value.shape != reference.shape or value.dtype != reference.dtype:
            return (
                f"{name!r} has shape {tuple(value.shape)} {value.dtype}, the model needs "
                f"{tuple(reference.shape)} {reference.dtype}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return f"{name!r} holds non-finite values"
    return None


def load_checkpoint(
    directory: str | Path,
    config: TrainConfig,
    fingerprint: dict[str, Any],
    module: torch.nn.Module | None = None,
) -> dict[str, Any] | None:
    """The checkpoint in ``directory``, or None if there is none; refuses one from other options, or
    with another ``fingerprint`` (:func:`run_fingerprint`: another model or other data).

    ``directory`` is first checked to be a folder that can be written (or created), so a run never
    fails at its first checkpoint for a path it could have tested before training. With ``module`` the
    checkpoint's weights are checked against it (names, shapes, dtypes).
    """
    check_folder_target(directory, role="checkpoint_dir")
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    state = _read_checkpoint(path)
    if state.get("fingerprint") != fingerprint:
        saved = state.get("fingerprint") or {}
        differs = sorted(k for k in fingerprint if saved.get(k) != fingerprint[k]) or ["unrecorded"]
        raise InputError(
            f"The checkpoint in {directory} belongs to another model or other data (differs in: "
            f"{', '.join(differs)}); use another checkpoint_dir, or delete that checkpoint to start over."
        )
    if state["config"] != asdict(config):
        changed = sorted(k for k, v in asdict(config).items() if state["config"].get(k) != v)
        raise InputError(
            f"The checkpoint in {directory} was made with other training options ({', '.join(changed)}); "
            "use the same options to resume, or another checkpoint_dir."
        )
    problem = None if module is None else state_dict_problem(state["module"], module.state_dict())
    if problem is not None:
        raise InputError(
            f"The checkpoint {path} does not fit the model: {problem}; delete it to start over, or use "
            "another checkpoint_dir."
        )
    return state
