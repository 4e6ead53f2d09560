"""Turning the user's ``device=`` into a torch device this build of torch and this machine can use."""

from __future__ import annotations

import os

import torch

from scamort.errors import InputError

__all__ = ["resolve_device"]

_HINT = "use 'auto', 'cpu' or 'cuda' (or 'cuda:N' for a GPU that exists)"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available (the ``LOCAL_RANK`` GPU under torchrun), else CPU; otherwise the
    device named, refused in one sentence unless this torch build and machine have it.

    Parameters
    ----------
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a :class:`torch.device`.

    Raises
    ------
    InputError
        For anything else: unknown names, a GPU index that does not exist, a backend this torch lacks
        (CUDA, MPS), or ``"meta"`` (a device that holds no data).
    """
    if isinstance(device, str) and device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if not isinstance(device, str | torch.device) or isinstance(device, bool):
        raise InputError(f"device must be a string such as 'cpu', got {device!r}; {_HINT}.")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"Unknown device {device!r}; {_HINT}.") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"device={device!r} was asked for but CUDA is not available (this torch build or machine "
                "has no usable GPU); use 'cpu' or 'auto'."
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise InputError(
                f"device={device!r} names GPU {resolved.index}, but this machine has {count} "
                f"(cuda:0 to cuda:{count - 1}); use one of those or 'auto'."
            )
        return resolved
    if resolved.type == "mps":
        if not _mps_available():
            raise InputError(
                f"device={device!r} was asked for but Apple's MPS backend is not available in this torch "
                "build or on this machine; use 'cpu' or 'auto'."
            )
        return resolved
    if resolved.type == "meta":
        raise InputError(f"device={device!r} holds no data, so nothing can be trained on it; {_HINT}.")
    raise InputError(f"device={device!r} is not supported by scamort; {_HINT}.")
