"""Checks on the paths a run will write or read, made before any work so that a long run cannot fail at
its end for a folder it could have tested at its start. Messages name the user's path, never a staging
file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from scamort.errors import InputError

__all__ = ["check_folder_target", "check_writable_folder", "nearest_existing_folder"]


def nearest_existing_folder(path: Path) -> Path:
    """``path`` itself if it exists, else its closest existing ancestor (what ``mkdir -p`` writes into)."""
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_writable_folder(folder: Path, *, role: str, path: Path) -> None:
    """Refuse ``folder`` unless a file can be created in it (tried for real, then removed).

    Parameters
    ----------
    folder
        The folder that will be written into.
    role, path
        What the user gave (e.g. ``"checkpoint_dir"``) and their path, as the message names them.

    Raises
    ------
    InputError
        If ``folder`` is not a folder or cannot be written to.
    """
    if not folder.is_dir():
        raise InputError(f"{role} {path}: {folder} is a file, not a folder; choose another path.")
    reason = None
    if not os.access(folder, os.W_OK | os.X_OK):
        reason = "permission denied"
    else:
        try:
            handle, probe = tempfile.mkstemp(prefix=".scamort-write-test.", dir=folder)
            os.close(handle)
            os.remove(probe)
        except OSError as exc:
            reason = (exc.strerror or type(exc).__name__).lower()
    if reason is not None:
        where = "it" if folder.absolute() == path.absolute() else f"its folder {folder}"
        raise InputError(
            f"{role} {path} cannot be written: {where} is not writable ({reason}); choose a folder you can "
            "write to."
        )


def check_folder_target(path: str | Path, *, role: str) -> None:
    """Refuse, before any work, a folder to be created or filled that is a file or cannot be written.

    Parameters
    ----------
    path
        The folder (it may not exist yet: it is then created with its parents).
    role
        What it is for, e.g. ``"checkpoint_dir"``.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InputError(f"{role} {target} is a file, not a folder; choose another path.")
    check_writable_folder(nearest_existing_folder(target), role=role, path=target)
