"""The model queries about a modality's expression: denoised proportions, imputed counts, library sizes
and posterior predictive draws.

Each public function backs the :class:`scamort.Model` method of the same concept and carries that
method's docstring (the facade shows it), so ``parts``, the first argument, is the one it does not
list. Each takes the model's :class:`~scamort.model_parts.ModelParts` first and checks its arguments
before any work. Cells lacking a modality get the library size predicted by the modality's library-size head
(models with several modalities) or, for models saved before the heads existed, the measured cells'
median.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from scamort import inference
from scamort._checks import check_whole_number, is_real_number
from scamort.errors import InputError
from scamort.feature_masks import measured_share
from scamort.model_parts import Indices, ModelParts, SelectedCells

__all__ = [
    "impute",
    "library_sizes",
    "normalized_expression",
    "posterior_predictive_sample",
    "predict_library_size",
]


def normalized_expression(
    parts: ModelParts,
    adata: ad.AnnData | None,
    indices: Indices,
    *,
    transform_batch: str | None,
    library_size: float | str,
    n_samples: int,
    modality: str | None,
    refine_steps: int,
    include_background: bool,
) -> pd.DataFrame:
    """Denoised expression: ``library_size ×`` the decoder's expression proportions.

    Parameters
    ----------
    adata
        Cells to use (default: the training data); any AnnData/MuData with the model's features.
    indices
        Positions of cells within ``adata`` (default all).
    transform_batch
        Decode every cell as if it came from this batch (batch-corrected expression).
    library_size
        Counts per cell of the output (``1e4``: counts per 10k), or ``"latent"``: each cell's
        library size predicted by the modality's library-size head from the latent of its other
        modalities (:meth:`predict_library_size`; models with several modalities), which gives
        expected counts also for cells lacking the modality.
    n_samples
        Average over this many posterior samples (1: use the posterior mean).
    modality
        Which modality to decode (default the first, e.g. RNA).
    refine_steps
        Refine each cell's posterior by this many gradient steps on its own ELBO first
        (see :meth:`refine`); 0 uses the encoders' posterior.
    include_background
        For an ``"nbmixture"`` modality: the mixture's mean (True) or only its foreground part,
        ``(1 - P(background)) × foreground mean`` (False, totalVI's denoised protein). Other
        likelihoods ignore it.

    Returns
    -------
    DataFrame cells × features (index: obs names, columns: feature names). For ``"nbmixture"``
    rows sum to about (not exactly) ``library_size``; for ``"bernoulli"`` the values are
    probabilities times ``library_size`` and for ``"bernoulli_depth"`` Poisson rates per unit depth
    times ``library_size``.
    """
    check_whole_number(n_samples, "n_samples")
    latent_library = isinstance(library_size, str)
    if (latent_library and library_size != "latent") or not (
        latent_library or (is_real_number(library_size, finite=True) and float(library_size) > 0)
    ):
        raise InputError(f"library_size must be a positive number or 'latent', got {library_size!r}.")
    name = parts.modality_name(modality)
    if latent_library:
        _require_library_head(parts, name)
    cells = parts.select(adata, indices)
    batch_code = None
    if transform_batch is not None:
        if parts.registry.batch_key is None:
            raise InputError("transform_batch needs a model trained with batch_key.")
        categories = parts.registry.batch_categories
        if str(transform_batch) not in categories:
            raise InputError(
                f"transform_batch={transform_batch!r} is not a batch of this model ({', '.join(categories)})."
            )
        batch_code = categories.index(str(transform_batch))
    values = _proportions(parts, cells, name, batch_code, n_samples, refine_steps, include_background)
    scale = _predicted_library(parts, cells, name) if latent_library else library_size
    return _feature_frame(parts, values * np.reshape(scale, (-1, 1)), cells.names, name)


def impute(
    parts: ModelParts,
    adata: ad.AnnData | None,
    indices: Indices,
    *,
    modality: str | None,
    n_samples: int,
    include_background: bool,
) -> pd.DataFrame:
    """Expected counts of ``modality`` for every cell, including cells never measured in it.

    The posterior uses each cell's measured modalities only, so for a cell without ``modality`` the
    prediction comes from the others (e.g. protein from RNA). Cells that have the modality keep
    their own library size; the others get the library size predicted from their latent by the
    modality's library-size head (:meth:`predict_library_size`; models saved before the head
    existed use the median library of the cells that have the modality).

    Parameters
    ----------
    adata
        Cells to use (default: the training data); any AnnData/MuData with the model's features.
    indices
        Positions of cells within ``adata`` (default all).
    modality
        The modality to predict (default the first).
    n_samples
        Average over this many posterior samples (1: use the posterior mean).
    include_background
        For an ``"nbmixture"`` modality: expected counts with the background (True, the mixture's
        mean) or the foreground part only (False). Other likelihoods ignore it.

    Returns
    -------
    DataFrame cells × features of ``modality``: expected counts, or for ``"bernoulli"`` and
    ``"bernoulli_depth"`` the probability of a 1 (for ``"bernoulli_depth"`` at the cell's depth,
    predicted where it lacks the modality).
    """
    check_whole_number(n_samples, "n_samples")
    cells = parts.select(adata, indices)
    name = parts.modality_name(modality)
    proportions = _proportions(parts, cells, name, None, n_samples, 0, include_background)
    likelihood = parts.registry.modality(name).modality.likelihood
    if likelihood == "bernoulli":  # probabilities; float64 like the expected counts below
        return _feature_frame(parts, proportions.astype(np.float64), cells.names, name)
    expected = proportions * library_sizes(parts, cells, name)[:, None]
    expected = (
        expected / measured_share(proportions, cells.data.modalities[name], cells.index, likelihood)[:, None]
    )
    if likelihood == "bernoulli_depth":
        expected = -np.expm1(-expected)
    return _feature_frame(parts, expected, cells.names, name)


def predict_library_size(
    parts: ModelParts, adata: ad.AnnData | None, indices: Indices, *, modality: str | None
) -> np.ndarray:
    """Each cell's library size of ``modality``, predicted from its other modalities.

    The modality's library-size head reads the posterior mean of the cell's *other* modalities
    (what is known about a cell lacking ``modality``; the prior's mean for a cell with no other)
    and gives a log-normal; this returns its expected value, ``exp(mean + variance / 2)``. It is
    trained on the cells measured in ``modality`` and another modality, from the same input.

    Parameters
    ----------
    adata
        Cells to use (default: the training data); any AnnData/MuData with the model's features.
    indices
        Positions of cells within ``adata`` (default all).
    modality
        A library-scaled modality of a model with several modalities (default the first).

    Returns
    -------
    Array ``(n_cells,)``.
    """
    cells = parts.select(adata, indices)
    return _predicted_library(parts, cells, parts.modality_name(modality))


def posterior_predictive_sample(
    parts: ModelParts, adata: ad.AnnData | None, indices: Indices, *, n_samples: int, modality: str | None
) -> np.ndarray:
    """Counts drawn from the posterior predictive: z ~ q(z|x), x' ~ p(x|z).

    Parameters
    ----------
    adata
        Cells to use (default: the training data); any AnnData/MuData with the model's features.
    indices
        Positions of cells within ``adata`` (default all).
    n_samples
        Draws per cell.
    modality
        Which modality to sample (default the first). Cells that lack it are sampled at the library
        size :meth:`impute` uses for them (predicted from their other modalities).

    Returns
    -------
    Array of shape ``(n_samples, n_cells, n_features)``.
    """
    check_whole_number(n_samples, "n_samples")
    cells = parts.select(adata, indices)
    name = parts.modality_name(modality)
    return inference.posterior_predictive(
        parts.module,
        cells.data,
        cells.index,
        modality=name,
        n_samples=n_samples,
        log_library=np.log(library_sizes(parts, cells, name)),
    )


def library_sizes(parts: ModelParts, cells: SelectedCells, name: str) -> np.ndarray:
    """Library size of modality ``name`` per selected cell ``(n_cells,)`` float64: the cell's own where
    it has the modality, else predicted by the library-size head (or the measured cells' median)."""
    tensors = cells.data.modalities[name]
    measured = tensors.present.cpu().numpy()
    all_libraries = np.exp(tensors.log_library.cpu().numpy())
    present = measured[cells.index]
    if name in parts.module.library_heads:
        missing = np.zeros(cells.index.size) if present.all() else _predicted_library(parts, cells, name)
    else:
        missing = np.median(all_libraries[measured])
    return np.where(present, all_libraries[cells.index], missing).astype(np.float64)


def _proportions(
    parts: ModelParts,
    cells: SelectedCells,
    name: str,
    batch_code: int | None,
    n_samples: int,
    refine_steps: int,
    include_background: bool,
) -> np.ndarray:
    """The decoder's expression proportions of modality ``name``, ``(n_cells, n_features)``."""
    return inference.normalized_expression(
        parts.module,
        cells.data,
        cells.index,
        modality=name,
        transform_batch=batch_code,
        n_samples=n_samples,
        posteriors=parts.posteriors(cells, refine_steps),
        include_background=include_background,
    )


def _feature_frame(parts: ModelParts, values: np.ndarray, names: pd.Index, modality: str) -> pd.DataFrame:
    """``values`` ``(n_cells, n_features)`` as a DataFrame: cell names × ``modality``'s features."""
    features = list(parts.registry.modality(modality).feature_names)
    return pd.DataFrame(values, index=names, columns=features)


def _require_library_head(parts: ModelParts, name: str) -> None:
    """Refuse modality ``name`` when it has no library-size head."""
    if name not in parts.module.library_heads:
        raise InputError(
            f"Modality {name!r} has no library-size head: only models with several modalities "
            "(saved by scamort >= 0.2) have one for each library-scaled modality."
        )


def _predicted_library(parts: ModelParts, cells: SelectedCells, name: str) -> np.ndarray:
    """Expected library size ``E[l] = exp(mean + variance / 2)`` of ``name`` from the head, ``(n,)``."""
    _require_library_head(parts, name)
    mean, variance = inference.library_size(parts.module, cells.data, cells.index, modality=name)
    return np.exp(mean + variance / 2)
