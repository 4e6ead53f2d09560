"""Copy the tutorial notebooks into the docs source tree, where myst-nb renders them.

The notebooks stay the source in ``tutorials/`` (committed with their outputs); the copies under
``docs/tutorials/`` are build inputs, ignored by git, refreshed on every build.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_notebooks(source: Path, target: Path) -> list[Path]:
    """Copy every ``source/*.ipynb`` to ``target``, removing stale copies of deleted notebooks.

    Parameters
    ----------
    source
        Folder holding the tutorial notebooks.
    target
        Folder of the docs tree that receives the copies (created if needed).

    Returns
    -------
    list of Path
        The copies, sorted by name.
    """
    target.mkdir(parents=True, exist_ok=True)
    notebooks = sorted(source.glob("*.ipynb"))
    names = {path.name for path in notebooks}
    for stale in target.glob("*.ipynb"):
        if stale.name not in names:
            stale.unlink()
    copies = []
    for notebook in notebooks:
        copy = target / notebook.name
        if not copy.exists() or copy.read_bytes() != notebook.read_bytes():
            shutil.copyfile(notebook, copy)
        copies.append(copy)
    return copies
