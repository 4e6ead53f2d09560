"""What the AnnData-facing model does differently for a modality with a feature mask.

Starting values of protein background rates from measured entries only, the library scale of imputed
features, and the groups of features that differential expression tests on the same measured cells.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from scamort.data.cell_data import ModalityTensors
from scamort.data.out_of_core import ModalitySummary
from scamort.nn.decoder import NegativeBinomialMixtureDecoder

__all__ = [
    "initialize_masked_background",
    "measured_feature_groups",
    "measured_share",
    "restrict_to_measured",
]

logger = logging.getLogger(__name__)


@torch.no_grad()
def initialize_masked_background(
    decoder: NegativeBinomialMixtureDecoder,
    counts: torch.Tensor,
    measured: torch.Tensor,
    batch_index: torch.Tensor,
) -> None:
    """Start an ``"nbmixture"`` decoder's background rates as
    :meth:`~scamort.nn.decoder.NegativeBinomialMixtureDecoder.initialize_background` does, over
    measured entries only: per batch and feature the 10% quantile of ``(x + 1/2) / library`` of the
    cells that measured it, else (a feature a batch never measured) of all cells that did.

    ``counts`` and ``measured`` are ``(n_cells, n_features)``, ``batch_index`` ``(n_cells,)``.
    """
    library = counts.sum(1, keepdim=True).clamp(min=1)
    rates = ((counts + 0.5) / library).to(torch.float32).masked_fill(~measured, float("nan"))
    overall = torch.nanquantile(rates, 0.1, dim=0)
    for batch in range(decoder.log_background.shape[0]):
        rows = rates[batch_index == batch]
        if rows.shape[0]:
            start = torch.nanquantile(rows, 0.1, dim=0)
            decoder.log_background[batch] = torch.where(start.isnan(), overall, start).log()
        else:
            decoder.log_background[batch] = overall.log()


def measured_share(
    proportions: np.ndarray, tensors: ModalityTensors | ModalitySummary, index: np.ndarray, likelihood: str
) -> np.ndarray:
    """Share of each cell's expected counts on the features it measured, ``(len(index),)``; 1 without
    a mask or for Bernoulli likelihoods. ``proportions`` ``(len(index), n_features)`` are the
    decoder's. Dividing expected counts at the cell's (measured) library by it puts imputed features
    on the scale of the measured ones, as the likelihood does (:mod:`scamort.masked_likelihood`)."""
    if tensors.measured_table is None or tensors.measured_pattern is None:
        return np.ones(len(index))
    if likelihood in ("bernoulli", "bernoulli_depth"):
        return np.ones(len(index))
    measured = tensors.measured_table.cpu().numpy()[tensors.measured_pattern.cpu().numpy()[index]]
    values = proportions.astype(np.float64)
    return (values * measured).sum(1) / values.sum(1)


def measured_feature_groups(
    tensors: ModalityTensors | ModalitySummary,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Features that the same cells measured, for those not measured in every cell.

    Returns
    -------
    list of ``(features, cells)``: positions of the features ``(k,)`` int64 and which cells measured
    them ``(n_cells,)`` bool. Features measured by every cell are left out.
    """
    if tensors.measured_table is None or tensors.measured_pattern is None:
        return []
    table = tensors.measured_table.cpu().numpy()
    pattern = tensors.measured_pattern.cpu().numpy()
    columns, group = np.unique(table.T, axis=0, return_inverse=True)
    out = []
    for code, column in enumerate(columns):
        if column.all():
            continue
        out.append((np.flatnonzero(group.reshape(-1) == code), column[pattern]))
    return out


def restrict_to_measured(
    tensors: ModalityTensors | ModalitySummary,
    groups: tuple[np.ndarray, np.ndarray],
    scales: list[np.ndarray],
    raw: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
    *,
    sample: Callable[[np.ndarray], np.ndarray],
    raw_statistics: Callable[[np.ndarray], dict[str, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Differential expression on measured cells only: for every group of features not measured in
    all cells (:func:`measured_feature_groups`), replace, in place, each cell group's sampled
    ``scales`` ``(n_samples, n_features)`` and ``raw`` statistics of those features by ones drawn
    from the group's cells that measured them (``sample(cells)`` and ``raw_statistics(cell_mask)``).
    A group with no such cell keeps its draws (imputed from all its cells).

    ``groups`` are the two groups' cell masks ``(n_cells,)``. Returns the number of cells of each
    group measured in each feature, two ``(n_features,)`` int64 arrays.
    """
    present = tensors.present.cpu().numpy()
    counts = [np.full(tensors.n_features, int((mask & present).sum()), dtype=np.int64) for mask in groups]
    for features, cells in measured_feature_groups(tensors):
        for g, mask in enumerate(groups):
            chosen = mask & cells & present
            counts[g][features] = int(chosen.sum())
            if not chosen.any():
                logger.warning(
                    "No cell of group %d measured %d features (e.g. position %d): their draws are imputed.",
                    g + 1,
                    features.size,
                    int(features[0]),
                )
                continue
            scales[g][:, features] = sample(np.flatnonzero(chosen))[:, features]
            statistics = raw_statistics(chosen)
            for key, values in statistics.items():
                raw[g][key][features] = values[features]
    return counts[0], counts[1]
