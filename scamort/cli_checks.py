"""Checks of the command line's paths and options, made before any data is read or trained on.

Each raises with one sentence naming the user's path or option: an input that is a folder or not an
HDF5 file, an output whose folder cannot be written, a ``--modality`` given twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from scamort.errors import InputError
from scamort.paths import check_writable_folder

__all__ = ["check_input_file", "check_output_folder", "check_unique_modalities", "read_input"]

T = TypeVar("T")


def check_input_file(path: Path, suffixes: Sequence[str]) -> None:
    """Refuse an input that does not exist, is a folder, has another suffix or is not an HDF5 file."""
    if path.is_dir():
        raise InputError(f"Input {path} is a folder, not a file; pass the .h5ad (or .h5mu) file itself.")
    if not path.is_file():
        raise FileNotFoundError(f"Input file {path} does not exist.")
    if path.suffix.lower() not in suffixes:
        raise InputError(f"Input file {path} is not an .h5ad or .h5mu file.")
    import h5py

    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError:
        is_hdf5 = False
    if not is_hdf5:
        raise InputError(
            f"Input file {path} is not an HDF5 file ({path.stat().st_size} bytes; damaged, cut short, or "
            f"another format saved as {path.suffix}); write it again with adata.write_h5ad."
        )


def read_input(path: Path, reader: Callable[[Path], T]) -> T:
    """``reader(path)`` with any failure of the file's contents reported as one sentence naming it."""
    try:
        return reader(path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(
            f"Input file {path} cannot be read as {path.suffix} ({type(exc).__name__}: the file is damaged "
            "or not written by anndata/mudata); write it again."
        ) from None


def check_output_folder(path: Path, *, role: str = "Output file") -> None:
    """Refuse an output whose folder is missing or cannot be written (tried for real)."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"The folder of the output file {path} does not exist.")
    if path.is_dir():
        raise InputError(f"{role} {path} is a folder; give a file name inside it.")
    check_writable_folder(path.parent, role=role, path=path)


def check_unique_modalities(specs: Sequence[tuple[str, object]] | None) -> None:
    """Refuse a ``--modality`` NAME given more than once (the last would silently win)."""
    seen: set[str] = set()
    for name, _ in specs or ():
        if name in seen:
            raise InputError(
                f"--modality {name}=... is given more than once; give each modality one --modality option."
            )
        seen.add(name)
