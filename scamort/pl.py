"""Plots: each function draws with matplotlib, never blocks, and returns the Figure.

Nothing here calls ``plt.show()``. In a notebook, assign the result (``fig = ...``) or end the
cell with ``;`` so the figure is displayed once; in a script, ``fig.savefig(...)``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from scamort._figures import figure_of
from scamort.amortization_gap import plot_amortization_gap as amortization_gap
from scamort.pl_labels import confusion_matrix, reliability_diagram

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "amortization_gap",
    "confusion_matrix",
    "embedding",
    "history",
    "imputation",
    "reliability_diagram",
]

logger = logging.getLogger(__name__)

_REQUIRED_HISTORY_COLUMNS = ("epoch", "train_elbo")


def history(model_or_history: Any, ax: Axes | None = None) -> Figure:
    """Plot training curves: train and validation ELBO per epoch, and the KL weight.

    Parameters
    ----------
    model_or_history
        A trained :class:`scamort.Model` (its ``.history`` is used) or the history
        :class:`~pandas.DataFrame` returned by ``Model.train`` (columns ``epoch``,
        ``train_elbo`` and, when present, ``validation_elbo``, ``kl_weight`` and ``stage``).
        With stages (``train(pretrain_modality=...)``) a dotted line marks where each begins; the
        ELBO of the pretraining stage covers its one modality only.
    ax
        Axes to draw the ELBO curves on; a new figure is made when ``None``. The KL weight is
        drawn on a twin y axis on the right.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding ``ax``.
    """
    frame = _history_frame(model_or_history)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 4.0), layout="constrained")
    else:
        fig = figure_of(ax)
    epochs = frame["epoch"].to_numpy()
    ax.plot(epochs, frame["train_elbo"].to_numpy(), color="C0", label="train ELBO")
    if _has_values(frame, "validation_elbo"):
        ax.plot(epochs, frame["validation_elbo"].to_numpy(), color="C1", label="validation ELBO")
    if "stage" in frame.columns:
        _mark_stages(ax, epochs, frame["stage"].astype(str).to_numpy())
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per cell (higher is better)")
    handles, labels = ax.get_legend_handles_labels()
    if _has_values(frame, "kl_weight"):
        twin = ax.twinx()
        twin.plot(epochs, frame["kl_weight"].to_numpy(), color="0.5", ls="--", label="KL weight")
        twin.set_ylabel("KL weight")
        twin.set_ylim(0.0, 1.05 * max(1.0, float(np.nanmax(frame["kl_weight"]))))
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="lower right", frameon=False)
    ax.set_title("scamort training")
    return fig


def _mark_stages(ax: Axes, epochs: np.ndarray, stages: np.ndarray) -> None:
    """A dotted line before each stage's first epoch but the first, and each stage's name at the top."""
    starts = np.flatnonzero(np.r_[True, stages[1:] != stages[:-1]])
    for position in starts:
        if position > 0:
            ax.axvline(epochs[position] - 0.5, color="0.6", ls=":", lw=1)
        ax.annotate(
            str(stages[position]),
            xy=(epochs[position], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize="small",
            color="0.4",
        )


def _history_frame(model_or_history: Any) -> pd.DataFrame:
    """Return the training history DataFrame from a model or a DataFrame, checking its columns."""
    if isinstance(model_or_history, pd.DataFrame):
        frame = model_or_history
    else:
        frame = getattr(model_or_history, "history", None)
        if frame is None:
            msg = (
                "Expected a trained scamort.Model or its history DataFrame; "
                f"got {type(model_or_history).__name__} without a training history "
                "(call model.train() first)."
            )
            raise ValueError(msg)
    missing = [column for column in _REQUIRED_HISTORY_COLUMNS if column not in frame.columns]
    if missing:
        msg = f"The training history lacks the column(s) {missing}; it has {list(frame.columns)}."
        raise ValueError(msg)
    if frame.empty:
        raise ValueError("The training history is empty: the model has not been trained yet.")
    return frame


def _has_values(frame: pd.DataFrame, column: str) -> bool:
    """Whether ``frame`` has ``column`` with at least one non-missing value."""
    return column in frame.columns and bool(frame[column].notna().any())


def embedding(
    adata: AnnData,
    basis: str = "umap",
    *,
    color: str | Sequence[str] | None = None,
    ax: Axes | None = None,
    **kwargs: Any,
) -> Figure:
    """Scatter plot of cells in a 2-d embedding, coloured by ``.obs`` columns or genes.

    A thin wrapper over :func:`scanpy.pl.embedding` that never shows and returns the Figure.
    Several ``color`` keys give panels side by side.

    Like scanpy's own plots it writes into ``adata``, and only this: a string ``.obs`` column used as
    ``color`` becomes categorical, and its palette is stored in ``.uns[f"{color}_colors"]`` so that
    later plots keep the same colours. Pass ``adata.copy()`` to leave ``adata`` untouched.

    Parameters
    ----------
    adata
        Annotated data with ``.obsm[f"X_{basis}"]`` (or ``.obsm[basis]``), e.g. from
        ``sc.tl.umap`` after ``sc.pp.neighbors(adata, use_rep="X_scamort")``.
    basis
        Name of the embedding, e.g. ``"umap"`` or ``"X_umap"``.
    color
        ``.obs`` column(s) or gene name(s) to colour by.
    ax
        Axes to draw on (single ``color`` only); a new figure is made when ``None``.
    **kwargs
        Passed on to :func:`scanpy.pl.embedding` (e.g. ``ncols``, ``size``, ``legend_loc``).

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn on.
    """
    import scanpy as sc

    _check_basis(adata, basis)
    for option in ("show", "return_fig", "save"):
        if option in kwargs:
            msg = f"scamort.pl.embedding manages {option!r} itself; save with fig.savefig(...)."
            raise TypeError(msg)
    if ax is not None:
        sc.pl.embedding(adata, basis, color=color, ax=ax, show=False, **kwargs)
        return figure_of(ax)
    return sc.pl.embedding(adata, basis, color=color, show=False, return_fig=True, **kwargs)


def _check_basis(adata: AnnData, basis: str) -> None:
    """Raise a clear error when ``adata.obsm`` has no embedding called ``basis``."""
    if basis in adata.obsm or f"X_{basis}" in adata.obsm:
        return
    available = ", ".join(repr(key) for key in adata.obsm) or "none"
    msg = (
        f"No embedding {basis!r} in adata.obsm (available keys: {available}); "
        f"compute it first, e.g. sc.tl.umap(adata) after sc.pp.neighbors(adata, use_rep=...)."
    )
    raise KeyError(msg)


def imputation(
    observed: pd.DataFrame,
    imputed: pd.DataFrame,
    features: list[str] | None = None,
    *,
    n_features: int = 4,
    log1p: bool = True,
) -> Figure:
    """Imputed against observed values per feature (e.g. protein from RNA), one panel each.

    Parameters
    ----------
    observed, imputed
        Cells × features tables with matching index and columns (e.g. held-out protein counts and
        ``model.impute(modality="prot")`` for the same cells).
    features
        Features to show; default the ``n_features`` with the highest correlation.
    n_features
        How many to show when ``features`` is None.
    log1p
        Compare ``log1p`` values.

    Returns
    -------
    The matplotlib Figure; each panel's title gives the Pearson correlation.
    """
    imputed = imputed.loc[observed.index, observed.columns]
    x = np.log1p(observed) if log1p else observed
    y = np.log1p(imputed) if log1p else imputed
    correlation = x.corrwith(y)
    chosen = features or list(correlation.sort_values(ascending=False).index[:n_features])
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 3.2), squeeze=False)
    for ax, name in zip(axes[0], chosen, strict=True):
        ax.scatter(x[name], y[name], s=5, alpha=0.6)
        top = float(max(x[name].max(), y[name].max()))
        ax.plot([0, top], [0, top], color="grey", lw=0.8)
        ax.set(title=f"{name} (r = {correlation[name]:.2f})", xlabel="observed", ylabel="imputed")
    fig.tight_layout()
    return fig
