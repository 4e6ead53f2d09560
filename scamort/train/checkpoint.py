"""Training checkpoints: everything needed to resume a run exactly, written atomically."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from scamort.errors import InputError
from scamort.train.config import TrainConfig

__all__ = ["CHECKPOINT_FILE", "load_checkpoint", "save_checkpoint"]

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


def load_checkpoint(directory: str | Path, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint in ``directory``, or None if there is none; refuses one from other options."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["config"] != asdict(config):
        changed = sorted(k for k, v in asdict(config).items() if state["config"].get(k) != v)
        raise InputError(
            f"The checkpoint in {directory} was made with other training options ({', '.join(changed)}); "
            "use the same options to resume, or another checkpoint_dir."
        )
    return state
