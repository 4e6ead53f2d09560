"""What counts as a whole number and as a real number in scamort's argument checks.

Python's ``bool`` is an ``int``, so ``isinstance(True, int)`` holds and ``n_latent=True`` would pass a
plain ``isinstance`` check as ``1``. These predicates refuse booleans, accept NumPy scalars, and (for
real numbers) refuse NaN, so every argument check in the package draws the same line. Each caller keeps
its own error message, except for the common "an integer >= minimum" (:func:`check_whole_number`).
"""

from __future__ import annotations

import math
import numbers
from typing import TypeGuard

from scamort.errors import InputError

__all__ = ["check_whole_number", "is_real_number", "is_whole_number"]


def is_whole_number(value: object, minimum: int | None = None) -> TypeGuard[int]:
    """Whether ``value`` is an integer (Python or NumPy, not a bool), at least ``minimum`` if given.

    Parameters
    ----------
    value
        The argument to check.
    minimum
        Smallest accepted value; ``None`` accepts any integer.

    Returns
    -------
    bool
        ``True`` for ``3`` or ``np.int64(3)``; ``False`` for ``True``, ``3.0`` or ``"3"``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return False
    return minimum is None or int(value) >= minimum


def is_real_number(value: object, *, finite: bool = False) -> TypeGuard[float]:
    """Whether ``value`` is a real number (Python or NumPy, not a bool, not NaN).

    Parameters
    ----------
    value
        The argument to check.
    finite
        Also refuse ``inf`` and ``-inf``.

    Returns
    -------
    bool
        ``True`` for ``0.5``, ``2`` or ``np.float32(0.5)``; ``False`` for ``True``, ``nan`` or ``"0.5"``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    number = float(value)
    return math.isfinite(number) if finite else not math.isnan(number)


def check_whole_number(value: object, name: str, minimum: int = 1) -> None:
    """Raise :class:`~scamort.errors.InputError` unless ``value`` is an integer ``>= minimum``.

    Parameters
    ----------
    value
        The argument to check.
    name
        The argument's name, for the message.
    minimum
        Smallest accepted value.
    """
    if not is_whole_number(value, minimum):
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
