"""What a model query reads: the model's parts, and the cells selected from the data or new cells.

Every query of :class:`scamort.Model` (latent, expression, ELBO, ...) takes ``adata`` and ``indices``.
The facade hands its parts to the query modules as one :class:`ModelParts`, whose :meth:`~ModelParts.select`
turns ``adata`` and ``indices`` into the encoded tensors on the model's device, the positions to use and
their obs names, refusing bad selections with one clear sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import final

import anndata as ad
import numpy as np
import pandas as pd
import torch

from scamort._checks import check_whole_number
from scamort.data import Registry, encode_cells
from scamort.data.backed import EncodedCells
from scamort.data.sources import is_mudata
from scamort.errors import InputError
from scamort.module import VAE
from scamort.refine import maybe_refine

__all__ = ["Indices", "ModelParts", "SelectedCells", "cell_positions"]

#: A query's ``indices``: integer positions or a boolean mask of cells, or ``None`` for every cell.
Indices = Sequence[int] | np.ndarray | None


@dataclass(frozen=True)
class SelectedCells:
    """The cells a query reads.

    Attributes
    ----------
    data
        All cells of the source, encoded, on the model's device.
    index
        Positions of the selected cells in ``data``, ``(n_selected,)`` int64.
    names
        Their obs names, ``(n_selected,)``.
    """

    data: EncodedCells
    index: np.ndarray
    names: pd.Index


def cell_positions(indices: Sequence[int] | np.ndarray, n_cells: int) -> np.ndarray:
    """Cell positions ``(k,)`` int64 from integer positions (negative ones count from the end) or a
    boolean mask of ``n_cells`` entries; refuses empty, fractional and out-of-range selections."""
    index = np.asarray(indices)
    if index.size == 0:
        raise InputError("indices selects no cells; pass at least one position, or None for every cell.")
    if index.dtype == bool:
        if index.shape != (n_cells,):
            raise InputError(
                f"A boolean indices mask needs one entry per cell ({n_cells}); got shape {index.shape}."
            )
        return np.flatnonzero(index).astype(np.int64)
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
        raise InputError(
            f"indices must be a 1-d list of integer positions or a boolean mask; got {index.dtype} values "
            f"of shape {index.shape}."
        )
    outside = index[(index < -n_cells) | (index >= n_cells)]
    if outside.size:
        raise InputError(f"indices must lie in [-{n_cells}, {n_cells}); got {outside[0]}.")
    return np.where(index < 0, index + n_cells, index).astype(np.int64)


@final
@dataclass(frozen=True)
class ModelParts:
    """The parts of a :class:`scamort.Model` its queries read.

    Attributes
    ----------
    module
        The VAE.
    registry
        Features, categories and covariates the model knows.
    adata
        The model's own data (the default cells of every query).
    data
        Its encoding.
    """

    module: VAE
    registry: Registry
    adata: ad.AnnData
    data: EncodedCells

    @property
    def device(self) -> torch.device:
        """Where the module's weights are."""
        return next(self.module.parameters()).device

    @property
    def n_latent(self) -> int:
        """The shared latent dimensions (the embedding's)."""
        return self.module.config.n_shared

    def select(self, adata: ad.AnnData | None, indices: Indices) -> SelectedCells:
        """The cells of ``adata`` (default the model's own, already encoded) at ``indices`` (default all).

        Parameters
        ----------
        adata
            New cells (an AnnData or MuData with the model's features), or ``None`` for the model's data.
        indices
            Integer positions or a boolean mask within ``adata``; ``None`` for every cell.

        Returns
        -------
        SelectedCells
            Encoded on the model's device.

        Raises
        ------
        InputError
            If ``adata`` is not an AnnData/MuData, or ``indices`` selects no or nonexistent cells.
        """
        if adata is not None and not isinstance(adata, ad.AnnData) and not is_mudata(adata):
            raise InputError(f"Expected an AnnData or MuData, got {type(adata).__name__}.")
        source = self.adata if adata is None else adata
        index = np.arange(source.n_obs) if indices is None else cell_positions(indices, source.n_obs)
        data = self.data if adata is None else encode_cells(adata, self.registry)
        return SelectedCells(data.to(self.device), index, source.obs_names[index])

    def modality_name(self, modality: str | None) -> str:
        """The name of ``modality`` (default the model's first), refusing names the model lacks."""
        return self.registry.modalities[0].name if modality is None else self.registry.modality(modality).name

    def posteriors(self, cells: SelectedCells, refine_steps: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The ``posteriors=`` of :mod:`scamort.inference`: None (the encoders') or refined ones."""
        check_whole_number(refine_steps, "refine_steps", minimum=0)
        return maybe_refine(self.module, cells.data, cells.index, int(refine_steps))

    def describe(self, history: pd.DataFrame | None, is_trained: bool) -> str:
        """One line: cells, modalities, batches, latent size and training state (the model's repr)."""
        modalities = ", ".join(
            f"{m.name}: {m.n_features} features, {m.modality.likelihood}" for m in self.registry.modalities
        )
        state = (
            f"trained {len(history)} epochs"
            if is_trained and history is not None
            else ("trained" if is_trained else "not trained")
        )
        batches = (
            f", {self.registry.n_batch} batches ({self.registry.batch_key!r})"
            if self.registry.batch_key
            else ""
        )
        return (
            f"scamort.Model({self.data.n_cells} cells; {modalities}{batches}; "
            f"n_latent={self.n_latent}; {state})"
        )
