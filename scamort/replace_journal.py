"""Replacing a folder atomically and recoverably, with temporary names that carry proof of ownership.

:func:`staged_replacement` builds the new folder under a fresh hidden name next to the target; inside it
a journal file (:data:`JOURNAL_FILE`) records the target and the unique name the previous folder will be
moved to. Then two renames: the previous folder aside, the new one into place; then the journal and the
previous folder are removed. A process killed at any point leaves a state :func:`recover` repairs:

- killed before the first rename: the target is untouched; the staging folder is deleted;
- killed between the renames (no target): the previous folder is renamed back;
- killed after the second rename (the target holds the journal): the new folder is complete; its
  journal and the previous folder are deleted.

Only folders proven ours are touched: a staging folder holding a journal that names the target, and the
retired folder named in that journal (a random name). A user's folder of any other name (e.g.
``.model.old``) is never moved or deleted.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scamort.errors import InputError

__all__ = ["JOURNAL_FILE", "recover", "staged_replacement"]

#: The journal inside a staging folder (and, briefly, inside the new target).
JOURNAL_FILE = ".scamort-replacing.json"


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.scamort-new-"


def _read_journal(folder: Path, target: Path) -> dict[str, str] | None:
    """The journal in ``folder`` if it is one of ours for ``target``, else None."""
    try:
        journal = json.loads((folder / JOURNAL_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(journal, dict) or journal.get("target") != target.name:
        return None
    retired = journal.get("retired")
    prefix = f".{target.name}.scamort-old-"
    if not (isinstance(retired, str) and retired.startswith(prefix) and "/" not in retired):
        return None
    return journal


def recover(target: str | Path) -> None:
    """Repair what an interrupted :func:`staged_replacement` of ``target`` left (see the module docs).

    Raises
    ------
    InputError
        If the repair itself fails (e.g. the folder became read-only); the message says what to move.
    """
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return
    try:
        if target.is_dir():
            journal = _read_journal(target, target)
            if journal is not None:  # killed after the second rename: the new folder is complete
                shutil.rmtree(parent / journal["retired"], ignore_errors=True)
                (target / JOURNAL_FILE).unlink()
        for staging in sorted(parent.glob(_staging_prefix(target) + "*")):
            journal = _read_journal(staging, target) if staging.is_dir() else None
            if journal is None:
                continue
            retired = parent / journal["retired"]
            if not target.exists() and retired.is_dir():  # killed between the renames
                os.replace(retired, target)
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise InputError(
            f"An interrupted save left {target} half replaced and it cannot be repaired "
            f"({exc.strerror or exc}); make its folder writable and load or save again."
        ) from None


@contextmanager
def staged_replacement(target: Path) -> Iterator[Path]:
    """Yield a fresh staging folder next to ``target``; on a normal exit it replaces ``target``.

    On an exception inside the block the staging folder is deleted and ``target`` is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), dir=target.parent))
    retired_name = f".{target.name}.scamort-old-{secrets.token_hex(8)}"
    journal = staging / JOURNAL_FILE
    journal.write_text(json.dumps({"target": target.name, "retired": retired_name}))
    try:
        yield staging
        if target.exists():
            retired = target.parent / retired_name
            os.replace(target, retired)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(retired, target)
                raise
            (target / JOURNAL_FILE).unlink()
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
            (target / JOURNAL_FILE).unlink()
    finally:
        # Keep the journal while the previous folder is aside (a failed rename back): recover() needs it.
        aside = not target.exists() and (target.parent / retired_name).exists()
        if staging.exists() and not aside and _read_journal(staging, target) is not None:
            shutil.rmtree(staging, ignore_errors=True)
