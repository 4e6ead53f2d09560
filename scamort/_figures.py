"""The figure a plot returns when the caller passes the axes to draw on."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["figure_of"]


def figure_of(ax: Axes) -> Figure:
    """The top-level :class:`~matplotlib.figure.Figure` holding ``ax`` (also when ``ax`` sits in a
    subfigure, whose own ``figure`` is the one above it)."""
    from matplotlib.figure import Figure

    holder = ax.figure
    while not isinstance(holder, Figure):
        holder = holder.figure
    return holder
