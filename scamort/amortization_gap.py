"""The amortization gap, measured per cell: how much better than the encoder's q a Gaussian can do.

For every cell: the encoder's ELBO, the ELBO after ``k`` refinement steps (a curve over ``k``) and
a near-optimum found by a long per-cell optimisation (more samples, a decaying learning rate).
Then ``gap = optimum - encoder`` and ``closure(k) = (refined_k - encoder) / gap``. All ELBOs of a
cell are evaluated with the same fixed draws (common random numbers), so differences between them
carry little Monte Carlo noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scamort._checks import is_whole_number
from scamort._figures import figure_of
from scamort.data.backed import EncodedCells
from scamort.errors import InputError
from scamort.module import VAE
from scamort.refine import RefineOptions, refine_with_options

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "AmortizationGap",
    "GapOptions",
    "MIN_PLOTTED_GAP",
    "measure_amortization_gap",
    "plot_amortization_gap",
]


#: Smallest gap (nats) on the histogram's log axis; smaller (or negative) gaps go in its first bin.
MIN_PLOTTED_GAP = 0.1


@dataclass(frozen=True)
class GapOptions:
    """How to measure the gap.

    Attributes
    ----------
    steps
        Refinement steps at which to evaluate the ELBO (step 0, the encoder, is always added).
    curve
        Refinement settings of the curve (its ``n_steps`` and ``record_elbo_at`` are set from
        ``steps``); default :class:`RefineOptions`, i.e. what ``refine_steps=k`` does.
    n_optimum_steps
        Steps of the long optimisation that finds the near-optimum.
    optimum_n_samples
        Samples per cell and step in the long optimisation.
    optimum_lr
        Its first learning rate, decayed geometrically to 1% of it by the last step.
    n_eval_samples
        Fixed draws per cell for every ELBO reported.
    """

    steps: Sequence[int] = (5, 20, 50)
    curve: RefineOptions = field(default_factory=RefineOptions)
    n_optimum_steps: int = 200
    optimum_n_samples: int = 8
    optimum_lr: float = 0.1
    n_eval_samples: int = 64

    def __post_init__(self) -> None:
        steps = self.steps if isinstance(self.steps, tuple | list) else None
        whole = (is_whole_number(k, 1) for k in steps or ())
        if not steps or not all(whole):
            raise InputError(f"steps must be a non-empty sequence of positive integers, got {self.steps!r}.")
        if self.n_optimum_steps < max(self.steps):
            raise InputError(
                f"n_optimum_steps={self.n_optimum_steps} must be >= the largest of steps ({max(self.steps)})."
            )

    def curve_options(self) -> RefineOptions:
        """Options of the curve run: refined up to the largest step, recording every step."""
        steps = (0, *sorted({int(k) for k in self.steps}))
        return RefineOptions(
            n_steps=steps[-1],
            lr=self.curve.lr,
            lr_decay=self.curve.lr_decay,
            n_samples=self.curve.n_samples,
            noise=self.curve.noise,
            batch_size=self.curve.batch_size,
            seed=self.curve.seed,
            record_elbo_at=steps,
            n_eval_samples=self.n_eval_samples,
        )

    def optimum_options(self) -> RefineOptions:
        """Options of the long run (the same seed, hence the same evaluation draws)."""
        return RefineOptions(
            n_steps=self.n_optimum_steps,
            lr=self.optimum_lr,
            lr_decay=0.01 ** (1.0 / self.n_optimum_steps),
            n_samples=self.optimum_n_samples,
            noise="per_step",
            batch_size=self.curve.batch_size,
            seed=self.curve.seed,
            record_elbo_at=(self.n_optimum_steps,),
            n_eval_samples=self.n_eval_samples,
        )


@dataclass(frozen=True)
class AmortizationGap:
    """Per-cell ELBOs of the encoder, of refined posteriors, and of a near-optimum.

    Attributes
    ----------
    steps
        Refinement steps of ``elbo``'s columns, starting with 0 (the encoder).
    elbo
        ELBO per cell after each of ``steps``, shape ``(n_cells, n_steps)``.
    optimum_elbo
        ELBO per cell of the near-optimum, shape ``(n_cells,)``.
    n_optimum_steps
        Steps of the long optimisation.
    curve_seconds, optimum_seconds
        Wall-clock time of the curve run (up to ``steps[-1]``, with evaluations) and the long run.
    """

    steps: tuple[int, ...]
    elbo: np.ndarray
    optimum_elbo: np.ndarray
    n_optimum_steps: int
    curve_seconds: float
    optimum_seconds: float

    @property
    def encoder_elbo(self) -> np.ndarray:
        """The encoders' ELBO per cell, ``(n_cells,)``."""
        return self.elbo[:, 0]

    @property
    def gap(self) -> np.ndarray:
        """Near-optimum minus encoder ELBO per cell (nats), ``(n_cells,)``."""
        return self.optimum_elbo - self.encoder_elbo

    @property
    def improvement(self) -> np.ndarray:
        """Refined minus encoder ELBO per cell and step, ``(n_cells, n_steps)``."""
        return self.elbo - self.encoder_elbo[:, None]

    @property
    def closure(self) -> np.ndarray:
        """Fraction of the mean gap closed after each step, ``mean(improvement) / mean(gap)``,
        shape ``(n_steps,)``."""
        return self.improvement.mean(0) / self.gap.mean()

    def per_cell_closure(self, min_gap: float = 1.0) -> np.ndarray:
        """``improvement / gap`` per cell, NaN where the gap is below ``min_gap`` nats,
        shape ``(n_cells, n_steps)``."""
        gap = np.where(self.gap >= min_gap, self.gap, np.nan)
        return self.improvement / gap[:, None]

    def to_frame(self, index: Sequence[Any] | pd.Index | None = None) -> pd.DataFrame:
        """One row per cell: ``encoder_elbo``, ``refined_elbo_{k}`` per step, ``optimum_elbo`` and
        ``amortization_gap`` (``index``: e.g. the cells' obs names)."""
        columns: dict[str, np.ndarray] = {"encoder_elbo": self.encoder_elbo}
        for position, step in enumerate(self.steps[1:], start=1):
            columns[f"refined_elbo_{step}"] = self.elbo[:, position]
        columns["optimum_elbo"] = self.optimum_elbo
        columns["amortization_gap"] = self.gap
        return pd.DataFrame(columns, index=index)

    def summary(self, min_gap: float = 1.0) -> dict[str, Any]:
        """Means over cells, as plain Python values (for JSON)."""
        per_cell = self.per_cell_closure(min_gap)
        gap = self.gap
        return {
            "n_cells": int(self.elbo.shape[0]),
            "steps": list(self.steps),
            "mean_elbo": [float(v) for v in self.elbo.mean(0)],
            "mean_encoder_elbo": float(self.encoder_elbo.mean()),
            "mean_optimum_elbo": float(self.optimum_elbo.mean()),
            "n_optimum_steps": self.n_optimum_steps,
            "mean_gap": float(gap.mean()),
            "gap_quantiles": {str(q): float(np.quantile(gap, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
            "closure": [float(v) for v in self.closure],
            "median_per_cell_closure": [
                float(np.nanmedian(column)) if np.isfinite(column).any() else None for column in per_cell.T
            ],
            "per_cell_closure_min_gap": min_gap,
            "fraction_cells_refined_above_optimum": [
                float(np.mean(column > self.optimum_elbo)) for column in self.elbo.T
            ],
            "curve_seconds": self.curve_seconds,
            "optimum_seconds": self.optimum_seconds,
        }


def measure_amortization_gap(
    module: VAE, data: EncodedCells, index: np.ndarray, options: GapOptions | None = None
) -> AmortizationGap:
    """Measure the amortization gap of each cell (two refinement runs; the module is untouched).

    Parameters
    ----------
    module
        A trained VAE.
    data
        The cells, on the module's device.
    index
        Positions of the cells, ``(n_cells,)``.
    options
        Steps of the curve and settings of the near-optimum (default :class:`GapOptions`).

    Returns
    -------
    AmortizationGap
        Per-cell ELBOs in the order of ``index``.
    """
    options = options or GapOptions()
    curve = refine_with_options(module, data, index, options.curve_options())
    optimum = refine_with_options(module, data, index, options.optimum_options())
    assert curve.elbo is not None and optimum.elbo is not None  # both record at least one step
    return AmortizationGap(
        steps=curve.recorded_steps,
        elbo=curve.elbo,
        optimum_elbo=optimum.elbo[:, 0],
        n_optimum_steps=options.n_optimum_steps,
        curve_seconds=curve.seconds,
        optimum_seconds=optimum.seconds,
    )


def plot_amortization_gap(
    gaps: AmortizationGap | Mapping[str, AmortizationGap],
    *,
    axes: Sequence[Axes] | None = None,
    bins: int = 40,
) -> Figure:
    """Plot the gap curve and the distribution of per-cell gaps.

    Left: mean ELBO gain over the encoder after ``k`` refinement steps (solid, labelled with the
    fraction of the gap closed) and the near-optimum's gain (dashed). Right: histogram of the
    per-cell gap (near-optimum minus encoder ELBO) on a log scale (the gap is heavy-tailed), as
    fractions of each measurement's cells; gaps below ``MIN_PLOTTED_GAP`` fall in the first bin.

    Parameters
    ----------
    gaps
        One measurement, or several by name (e.g. ``{"held-out": ..., "other batch": ...}``), drawn
        in one colour each.
    axes
        Two axes to draw on; a new figure with two panels when ``None``.
    bins
        Histogram bins (shared by all measurements).

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the axes; nothing is shown.
    """
    import matplotlib.pyplot as plt

    named = {"cells": gaps} if isinstance(gaps, AmortizationGap) else dict(gaps)
    if not named:
        raise ValueError("Nothing to plot: pass at least one AmortizationGap.")
    if axes is None:
        fig, (curve_ax, hist_ax) = plt.subplots(1, 2, figsize=(10.0, 4.0), layout="constrained")
    else:
        curve_ax, hist_ax = axes
        fig = figure_of(curve_ax)
    largest = max(float(np.max(g.gap, initial=0.0)) for g in named.values())
    edges = np.geomspace(MIN_PLOTTED_GAP, max(largest, 10 * MIN_PLOTTED_GAP), bins + 1)
    for colour, (name, gap) in enumerate(named.items()):
        _draw_curve(curve_ax, gap, name, f"C{colour}")
        weights = np.full(gap.gap.shape, 1.0 / max(len(gap.gap), 1))
        hist_ax.hist(
            np.clip(gap.gap, MIN_PLOTTED_GAP, None),
            bins=edges,
            weights=weights,
            histtype="step",
            color=f"C{colour}",
            label=f"{name} (median {np.median(gap.gap):.1f})",
        )
    hist_ax.set_xscale("log")
    curve_ax.set_xlabel("refinement steps")
    curve_ax.set_ylabel("mean ELBO gain over the encoder (nats)")
    curve_ax.set_title("amortization gap closed by refinement")
    curve_ax.legend(frameon=False, loc="best", fontsize=8)
    hist_ax.set_xlabel("per-cell gap: near-optimum - encoder ELBO (nats, log scale)")
    hist_ax.set_ylabel("fraction of cells")
    hist_ax.set_title("per-cell amortization gap")
    hist_ax.legend(frameon=False, fontsize=8)
    return fig


def _draw_curve(ax: Axes, gap: AmortizationGap, name: str, colour: str) -> None:
    """One measurement's gain curve, closure labels and near-optimum line on ``ax``."""
    steps = np.asarray(gap.steps)
    gain = gap.improvement.mean(0)
    ax.plot(steps, gain, marker="o", color=colour, label=f"{name}: refined")
    ax.axhline(gap.gap.mean(), color=colour, ls="--", lw=1, label=f"{name}: near-optimum")
    for step, value, fraction in zip(steps[1:], gain[1:], gap.closure[1:], strict=True):
        ax.annotate(
            f"{fraction:.0%}",
            (step, value),
            textcoords="offset points",
            xytext=(0, -12),
            ha="center",
            fontsize=8,
            color=colour,
        )
