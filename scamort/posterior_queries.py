"""The model queries about each cell's posterior: latent, ELBO, marginal likelihood, refinement, gap.

Each public function backs the :class:`scamort.Model` method of the same concept and carries that
method's docstring (the facade shows it), so ``parts``, the first argument, is the one it does not
list. Each takes the model's :class:`~scamort.model_parts.ModelParts` first, checks its arguments
before any work and reads the cells through :meth:`~scamort.model_parts.ModelParts.select`.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np

from scamort import inference
from scamort._checks import check_whole_number
from scamort.amortization_gap import AmortizationGap, GapOptions, measure_amortization_gap
from scamort.errors import InputError
from scamort.model_parts import Indices, ModelParts
from scamort.refine import RefinementResult, refine_posteriors

__all__ = [
    "amortization_gap",
    "elbo",
    "latent_representation",
    "marginal_ll",
    "reconstruction_error",
    "refine",
]


def latent_representation(
    parts: ModelParts,
    adata: ad.AnnData | None,
    indices: Indices,
    *,
    give_mean: bool,
    modality: str | None,
    refine_steps: int,
) -> np.ndarray:
    """Posterior of the latent per cell.

    Parameters
    ----------
    adata
        Cells to embed (default: the training AnnData); any AnnData with the model's genes.
    indices
        Positions of cells within ``adata`` (default all).
    give_mean
        Posterior mean (default) or one sample.
    modality
        Use only this modality's expert (with the prior); default the joint posterior.
    refine_steps
        Refine each cell's posterior by this many gradient steps on its own ELBO first
        (see :meth:`refine`); 0 uses the encoders' posterior.

    Returns
    -------
    Array of shape ``(n_cells, n_latent)``.
    """
    cells = parts.select(adata, indices)
    modalities = None if modality is None else (parts.modality_name(modality),)
    if modalities is not None and refine_steps:
        raise InputError("refine_steps refines the joint posterior; use it without modality=.")
    mean, _ = inference.latent(
        parts.module,
        cells.data,
        cells.index,
        give_mean=give_mean,
        modalities=modalities,
        posteriors=parts.posteriors(cells, refine_steps),
        with_log_variance=False,
    )
    return mean[:, : parts.n_latent]


def elbo(
    parts: ModelParts, adata: ad.AnnData | None, indices: Indices, *, return_mean: bool, refine_steps: int
) -> float | np.ndarray:
    """Evidence lower bound per cell (a log-density: negative for counts, higher is better).

    One reparameterised sample per cell, KL weight 1. Returns the mean over cells, or one value per
    cell (shape ``(n_cells,)``) with ``return_mean=False``. ``refine_steps`` evaluates the ELBO of
    refined posteriors (see :meth:`refine`).

    Parameters
    ----------
    adata
        Cells to use (default: the training data); any AnnData/MuData with the model's features.
    indices
        Positions of cells within ``adata`` (default all).
    return_mean
        Return the mean over cells instead of one value per cell.
    refine_steps
        Refine each cell's posterior by this many gradient steps on its own ELBO first
        (see :meth:`refine`); 0 uses the encoders' posterior.
    """
    cells = parts.select(adata, indices)
    reconstruction, kl = inference.elbo_terms(
        parts.module, cells.data, cells.index, posteriors=parts.posteriors(cells, refine_steps)
    )
    values = sum(reconstruction.values()) - kl
    return float(values.mean()) if return_mean else values


def reconstruction_error(
    parts: ModelParts, adata: ad.AnnData | None, indices: Indices, *, return_mean: bool
) -> dict[str, float | np.ndarray]:
    """Expected reconstruction log-likelihood ``E_q log p(x_m | z)`` per modality.

    Parameters
    ----------
    adata
        Cells to use (default: the training data); any AnnData/MuData with the model's features.
    indices
        Positions of cells within ``adata`` (default all).
    return_mean
        Return means over cells instead of per-cell arrays.
    Returns
    -------
    Modality name -> mean over cells (or per-cell array ``(n_cells,)`` with ``return_mean=False``).
    """
    cells = parts.select(adata, indices)
    reconstruction, _ = inference.elbo_terms(parts.module, cells.data, cells.index)
    return {k: float(v.mean()) if return_mean else v for k, v in reconstruction.items()}


def marginal_ll(
    parts: ModelParts,
    adata: ad.AnnData | None,
    indices: Indices,
    *,
    n_mc_samples: int,
    return_mean: bool,
    refine_steps: int,
) -> float | np.ndarray:
    """Importance-sampled marginal log-likelihood ``log p(x)`` per cell (q as the proposal).

    Returns the mean over cells, or ``(n_cells,)`` with ``return_mean=False``. ``refine_steps``
    uses refined posteriors as the proposal (see :meth:`refine`): a better proposal gives a
    tighter estimate with the same number of samples.

    Parameters
    ----------
    adata
        Cells to use (default: the training data); any AnnData/MuData with the model's features.
    indices
        Positions of cells within ``adata`` (default all).
    n_mc_samples
        Importance samples per cell (processed in chunks, so memory stays bounded).
    return_mean
        Return the mean over cells instead of one value per cell.
    refine_steps
        Refine each cell's posterior by this many gradient steps on its own ELBO first
        (see :meth:`refine`); 0 uses the encoders' posterior.
    """
    check_whole_number(n_mc_samples, "n_mc_samples")
    cells = parts.select(adata, indices)
    values = inference.marginal_log_likelihood(
        parts.module,
        cells.data,
        cells.index,
        n_mc_samples=n_mc_samples,
        posteriors=parts.posteriors(cells, refine_steps),
    )
    return float(values.mean()) if return_mean else values


def refine(
    parts: ModelParts,
    adata: ad.AnnData | None,
    indices: Indices,
    *,
    n_steps: int,
    lr: float,
    n_samples: int,
    batch_size: int,
    seed: int,
    record_elbo_at: Sequence[int],
) -> RefinementResult:
    """Refine each cell's posterior by gradient steps on its own ELBO (semi-amortized inference).

    Starts from the encoders' q(z|x) and takes ``n_steps`` Adam steps per cell on that cell's
    ELBO (KL weight 1), all cells of a minibatch at once, with encoders and decoders frozen
    (their weights never change). This closes the *amortization gap* of one shared encoder,
    most for cells unlike the training data. The same refinement is available everywhere a
    posterior is used through ``refine_steps=`` (latent, ELBO, marginal LL, expression).

    Parameters
    ----------
    adata, indices
        Cells to refine (default: all training cells).
    n_steps
        Adam steps per cell.
    lr
        Initial Adam learning rate on means and log-variances (decays by 0.95 per step).
    n_samples
        Reparameterisation samples per cell and step.
    batch_size
        Cells refined together (memory grows with ``batch_size * n_samples``).
    seed
        Seed of the (counter-based, per-cell) noise: a cell is refined the same way alone or
        in any minibatch.
    record_elbo_at
        Steps after which to record each cell's ELBO (0 = the encoders' posterior).

    Returns
    -------
    :class:`scamort.refine.RefinementResult` with ``mean`` and ``log_variance``
    ``(n_cells, n_latent)`` (with ``n_private_latent``: the whole latent vector, the shared
    dimensions first, then each modality's private ones), the recorded ``elbo``
    ``(n_cells, n_recorded)`` and ``seconds``.
    """
    for value, name in ((n_steps, "n_steps"), (n_samples, "n_samples"), (batch_size, "batch_size")):
        check_whole_number(value, name, minimum=0 if name == "n_steps" else 1)
    cells = parts.select(adata, indices)
    try:
        return refine_posteriors(
            parts.module,
            cells.data,
            cells.index,
            n_steps=int(n_steps),
            lr=lr,
            n_samples=int(n_samples),
            batch_size=int(batch_size),
            seed=seed,
            record_elbo_at=record_elbo_at,
        )
    except ValueError as error:
        raise InputError(str(error)) from None


def amortization_gap(
    parts: ModelParts,
    adata: ad.AnnData | None,
    indices: Indices,
    *,
    steps: Sequence[int],
    n_optimum_steps: int,
) -> AmortizationGap:
    """Measure each cell's amortization gap: how far the encoder's posterior is from the best one.

    For every cell: the encoder's ELBO, the refined ELBO after each of ``steps`` (a curve), and a
    near-optimum from ``n_optimum_steps`` of per-cell optimisation. ``gap = optimum - encoder``
    and ``closure(k) = (refined_k - encoder) / gap``. A large gap flags cells the encoder serves
    badly (cells unlike the training data, rare types): a QC signal.

    Parameters
    ----------
    adata
        Cells to use (default: the training data); any AnnData/MuData with the model's features.
    indices
        Positions of cells within ``adata`` (default all).
    steps
        Refinement steps at which to record each cell's ELBO (the curve).
    n_optimum_steps
        Steps of the long per-cell optimisation giving the near-optimum.
    Returns
    -------
    :class:`scamort.amortization_gap.AmortizationGap`: ``gap`` ``(n_cells,)``, ``closure``
    ``(n_steps,)``, ``to_frame()`` (per-cell table), ``summary()``; plot it with
    :func:`scamort.pl.amortization_gap`, store it in ``.obs`` with :func:`scamort.tl.amortization_gap`.
    """
    check_whole_number(n_optimum_steps, "n_optimum_steps")
    given = tuple(steps) if isinstance(steps, tuple | list) else steps
    options = GapOptions(steps=given, n_optimum_steps=int(n_optimum_steps))  # checked before any work
    cells = parts.select(adata, indices)
    return measure_amortization_gap(parts.module, cells.data, cells.index, options)
