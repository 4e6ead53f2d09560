"""Training checkpoints: everything needed to resume a run exactly, written atomically."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from scamort.data.cell_data import CellData
from scamort.errors import InputError
from scamort.train.config import TrainConfig

__all__ = ["CHECKPOINT_FILE", "load_checkpoint", "run_fingerprint", "save_checkpoint"]

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


def run_fingerprint(module: torch.nn.Module, data: Any) -> dict[str, Any]:
    """What a checkpoint must match besides the training options: the model's configuration, and the
    data's cells and count totals (integers, so exact on any device).

    Parameters
    ----------
    module
        The VAE (its ``config`` describes the architecture).
    data
        The cells trained on (:class:`~scamort.data.CellData`, or backed data with ``n_cells``).

    Returns
    -------
    dict
        Strings and numbers only.
    """
    fingerprint: dict[str, Any] = {"module": repr(module.config), "n_cells": int(data.n_cells)}
    in_memory = data.modalities if isinstance(data, CellData) else {}  # backed data: cells only
    for name, tensors in in_memory.items():
        fingerprint[f"counts_{name}"] = [
            int(tensors.n_features),
            int(tensors.values.numel()),
            float(tensors.values.double().sum()),
            int(tensors.present.sum()),
        ]
    return fingerprint


def load_checkpoint(
    directory: str | Path, config: TrainConfig, fingerprint: dict[str, Any]
) -> dict[str, Any] | None:
    """The checkpoint in ``directory``, or None if there is none; refuses one from other options, or
    with another ``fingerprint`` (:func:`run_fingerprint`: another model or other data)."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
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
    return state
