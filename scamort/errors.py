"""The exception users see when their input cannot be used."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Input data or arguments that scamort cannot use.

    The message is one sentence: what is wrong and how to fix it. Raised before any work starts, so the
    user's objects are never left half-modified.
    """
