"""Docstrings that live with the code owning a concept and are shown on the facade's methods.

:class:`scamort.Model` is a facade: most of its methods are one call into the module that owns the
concept (:mod:`scamort.posterior_queries`, :mod:`scamort.expression_queries`,
:mod:`scamort.model_training`). Their full numpydoc docstrings are written once, on that function, and
:func:`docstring_from` shows them on the method (``help()``, Sphinx autodoc).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["docstring_from"]

F = TypeVar("F", bound=Callable[..., Any])


def docstring_from(owner: Callable[..., Any]) -> Callable[[F], F]:
    """Decorate a method so that its docstring is ``owner``'s.

    Parameters
    ----------
    owner
        The function that implements the method and carries its documentation.

    Returns
    -------
    Callable
        A decorator returning the method itself, with ``__doc__`` set.
    """

    def attach(method: F) -> F:
        method.__doc__ = owner.__doc__
        return method

    return attach
