"""Bayesian differential expression from a trained model's posterior, as scVI users know it.

For each group of cells, latent vectors are drawn from q(z | x) of randomly chosen cells of the group and
decoded into normalized expression (expression proportions ``ρ``, rows summing to 1). With batch
correction every draw is decoded under each of the model's batches and the proportions are averaged, so
both groups are compared on the same batch-free footing. Draw ``i`` of group 1 is paired with draw ``i``
of group 2, and each pair gives a log2 fold change per gene. From these posterior samples:

``mode="change"`` (Boyeau et al. 2019)
    ``proba_de = P(|LFC| >= delta)``, its Bayes factor ``log(p / (1 - p))``, the posterior LFC mean,
    median and standard deviation, and posterior expected FDR control: genes sorted by ``proba_de``;
    the largest prefix whose mean of ``1 - proba_de`` is at most ``fdr_target`` is called DE.
``mode="vanilla"`` (Lopez et al. 2018)
    ``proba_m1 = P(ρ1 > ρ2)`` and its Bayes factor.

The statistics are pure functions of the sampled arrays (:func:`change_statistics`,
:func:`vanilla_statistics`, :func:`posterior_expected_fdr`, :func:`fdr_de_flags`, defined in
:mod:`scamort.de_statistics` and re-exported here); only :func:`differential_expression` touches the
model and the AnnData, which it reads through the :class:`DifferentialModel` protocol (what a
:class:`scamort.Model` offers), so this module does not import the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scamort import inference
from scamort._checks import is_real_number, is_whole_number
from scamort.data import encode_cells
from scamort.data.sources import is_mudata
from scamort.data.validation import missing_obs_column
from scamort.de_statistics import (
    change_statistics,
    estimate_pseudocount,
    fdr_de_flags,
    posterior_expected_fdr,
    vanilla_statistics,
)
from scamort.errors import InputError
from scamort.feature_masks import restrict_to_measured

if TYPE_CHECKING:
    import anndata as ad

    from scamort.data import Registry
    from scamort.data.backed import EncodedCells
    from scamort.module import VAE

__all__ = [
    "MODES",
    "change_statistics",
    "differential_expression",
    "estimate_pseudocount",
    "fdr_de_flags",
    "posterior_expected_fdr",
    "vanilla_statistics",
]

logger = logging.getLogger(__name__)

#: The supported test modes.
MODES = ("change", "vanilla")

#: Mean raw count below which a gene counts as not expressed in a group (pseudocount estimate).
_NOT_EXPRESSED_MEAN = 0.01
#: Features per block when computing statistics (temporaries of ``n_samples × _FEATURE_CHUNK``).
_FEATURE_CHUNK = 2048


class DifferentialModel(Protocol):
    """What :func:`differential_expression` reads of a model (a :class:`scamort.Model` has it all).

    Attributes
    ----------
    adata
        The model's training data (the default cells).
    registry
        The model's features, batches and covariates.
    module
        The trained VAE.
    is_trained
        Whether the model was trained (an untrained one only draws a warning).
    """

    adata: Any
    registry: Registry
    module: VAE
    is_trained: bool

    @property
    def device(self) -> torch.device:
        """Where the module's weights are."""
        ...


# ---------------------------------------------------------------------------------------- groups
def _group_masks(
    source: Any, groupby: str, group1: Any, group2: Any | None
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Boolean cell masks of both groups of ``source.obs`` (an AnnData or MuData) and their labels
    (``"rest"`` for every other cell)."""
    obs = source.obs
    if is_mudata(source) and isinstance(groupby, str) and groupby not in obs.columns:
        raise missing_obs_column(source, groupby, "groupby")
    if not isinstance(groupby, str) or groupby not in obs.columns:
        columns = ", ".join(map(repr, obs.columns)) or "none"
        raise InputError(f"groupby={groupby!r} is not a column of .obs (columns: {columns}).")
    column = obs[groupby]
    if pd.api.types.is_float_dtype(column) and bool((column.dropna() % 1 == 0).all()):
        column = column.astype("Int64")  # whole numbers stored as float (e.g. beside NaN): match 1 to 1.0
        group1, group2 = (
            int(g) if isinstance(g, float | np.floating) and float(g).is_integer() else g
            for g in (group1, group2)
        )
    labels = column.astype(str).to_numpy()
    valid = column.notna().to_numpy()
    known = list(column.cat.categories) if hasattr(column, "cat") else sorted(set(labels[valid]))
    known = [str(k) for k in known]
    for name, group in (("group1", group1), ("group2", group2)):
        if group is not None and str(group) not in known:
            shown = ", ".join(map(repr, known[:20])) + (", ..." if len(known) > 20 else "")
            raise InputError(f"{name}={group!r} is not a group of .obs[{groupby!r}] (groups: {shown}).")
    label1 = str(group1)
    label2 = "rest" if group2 is None else str(group2)
    if group2 is not None and label1 == label2:
        raise InputError(f"group1 and group2 are the same group ({label1!r}); compare two different groups.")
    mask1 = valid & (labels == label1)
    mask2 = valid & (labels != label1) if group2 is None else valid & (labels == label2)
    for label, mask in ((label1, mask1), (label2, mask2)):
        if not mask.any():
            raise InputError(
                f"Group {label!r} of .obs[{groupby!r}] has no cells; choose groups that have cells."
            )
    return mask1, mask2, label1, label2


# ---------------------------------------------------------------------------------------- sampling
def _batch_codes(model: DifferentialModel, batch_correction: bool) -> list[int | None]:
    """Batch codes to decode under and average over; ``[None]`` decodes with each cell's own batch."""
    if batch_correction and model.registry.batch_key is not None:
        return list(range(model.registry.n_batch))
    return [None]


def _sample_scales(
    model: DifferentialModel,
    data: EncodedCells,
    cells: np.ndarray,
    *,
    modality: str,
    n_samples: int,
    batch_codes: list[int | None],
    rng: np.random.Generator,
) -> np.ndarray:
    """``n_samples`` normalized-expression draws of one group, ``(n_samples, n_features)`` float32.

    Each draw picks a random cell of ``cells`` (with replacement), samples z from its q(z | x) and
    decodes it under every batch code (averaging the proportions).
    """
    unique, inverse = np.unique(rng.choice(cells, size=n_samples, replace=True), return_inverse=True)
    mean, log_variance = inference.latent(model.module, data, unique)
    mean, log_variance = mean[inverse], log_variance[inverse]
    noise = rng.standard_normal(mean.shape).astype(mean.dtype)
    z = mean + np.exp(0.5 * log_variance) * noise
    drawn_cells = unique[inverse]
    total = np.zeros((n_samples, model.registry.modality(modality).n_features), dtype=np.float32)
    for code in batch_codes:
        total += inference.normalized_expression(
            model.module,
            data,
            drawn_cells,
            modality=modality,
            transform_batch=code,
            posteriors=(z, log_variance),
        )
    return total / len(batch_codes)


def _by_feature_chunks(
    statistics: Callable[..., dict[str, np.ndarray]],
    scales1: np.ndarray,
    scales2: np.ndarray,
    **options: Any,
) -> dict[str, np.ndarray]:
    """``statistics`` computed on blocks of ``_FEATURE_CHUNK`` features at a time (bounded temporaries)."""
    parts = [
        statistics(
            scales1[:, start : start + _FEATURE_CHUNK], scales2[:, start : start + _FEATURE_CHUNK], **options
        )
        for start in range(0, scales1.shape[1], _FEATURE_CHUNK)
    ]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _raw_statistics(data: EncodedCells, modality: str, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Observed-count summaries of the group's measured cells, each ``(n_features,)``."""
    summary = data.modalities[modality]
    rows = np.flatnonzero(mask & summary.present.cpu().numpy())
    if rows.size == 0:
        nan = np.full(summary.n_features, np.nan)
        return {"raw_mean": nan, "non_zeros_proportion": nan, "raw_normalized_mean": nan}
    # the group's rows only (read from disk for out-of-core data)
    tensors = data.take(torch.as_tensor(rows, device=data.device)).modalities[modality]
    group = sp.csr_matrix(
        (tensors.values.cpu().numpy(), tensors.indices.cpu().numpy(), tensors.indptr.cpu().numpy()),
        shape=(rows.size, tensors.n_features),
    )
    library = np.maximum(np.asarray(group.sum(axis=1)).ravel(), 1.0)
    normalized = sp.diags(1e4 / library) @ group
    return {
        "raw_mean": np.asarray(group.mean(axis=0)).ravel(),
        "non_zeros_proportion": np.asarray((group > 0).mean(axis=0)).ravel(),
        "raw_normalized_mean": np.asarray(normalized.mean(axis=0)).ravel(),
    }


# ---------------------------------------------------------------------------------------- entry point
def differential_expression(
    model: DifferentialModel,
    adata: ad.AnnData | None = None,
    *,
    groupby: str,
    group1: Any,
    group2: Any | None = None,
    mode: str = "change",
    delta: float = 0.25,
    batch_correction: bool = True,
    modality: str | None = None,
    n_samples: int = 5000,
    pseudocount: float | None = None,
    fdr_target: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Bayesian differential expression between two groups of cells, from the model's posterior.

    ``n_samples`` latent vectors per group are drawn from q(z | x) of randomly chosen cells of the group
    (in an unpaired MuData also cells that lack ``modality``: their z comes from their other modalities,
    so their expression is imputed; the raw statistics count only measured cells)
    and decoded into normalized expression ``ρ`` (proportions summing to 1 per draw). With
    ``batch_correction`` each draw is decoded under every batch of the model and the proportions are
    averaged. Draw ``i`` of group 1 is paired with draw ``i`` of group 2, giving posterior samples of the
    log2 fold change ``LFC = log2(ρ1 + pseudocount) - log2(ρ2 + pseudocount)`` per feature.

    Parameters
    ----------
    model
        A trained :class:`scamort.Model`.
    adata
        Cells to compare (default: the model's training data); an AnnData or MuData with the model's
        features and covariate columns, and ``.obs[groupby]``.
    groupby
        ``.obs`` column defining the groups (e.g. cell types or Leiden clusters).
    group1
        The group of interest (a value of ``.obs[groupby]``).
    group2
        The reference group; ``None`` compares ``group1`` with all other cells ("rest").
    mode
        ``"change"``: probability of a change of at least ``delta`` in log2 fold change, with
        posterior expected FDR control. ``"vanilla"``: probability that group 1 expresses a feature
        more than group 2.
    delta
        Smallest log2 fold change that counts as a change (``"change"`` mode); ``0.25`` is a
        ``2**0.25 ≈ 1.19``-fold change.
    batch_correction
        Decode every draw under each batch of the model and average (requires a model trained with
        ``batch_key``; ignored otherwise). ``False`` decodes each draw with its own cell's batch.
    modality
        Which modality's features to test (default the model's first, e.g. RNA; ``"prot"`` for the
        protein of a CITE-seq model).
    n_samples
        Posterior draws per group, and pairs of draws; more draws give smoother probabilities.
        Memory: about ``2 × n_samples × n_features`` float32 values (800 MB for 5000 draws of 20,000
        genes); the statistics are computed in blocks of features.
    pseudocount
        Added to the proportions before the logarithm; ``None`` estimates it as scVI does (from the
        sampled proportions of genes a group does not express, mean raw count below 0.01).
    fdr_target
        Posterior expected false discovery rate of the ``is_de_fdr_<fdr_target>`` calls.
    seed
        Seeds the choice of cells and the posterior draws; the same seed gives the same table.

    Returns
    -------
    pandas.DataFrame
        One row per feature, indexed by feature name, sorted by evidence: in ``"change"`` mode by
        ``proba_de`` then ``|lfc_mean|`` (decreasing), in ``"vanilla"`` mode by ``|bayes_factor|``
        then ``|lfc_mean|``. Columns:

        ``proba_de``, ``proba_not_de`` (``"change"``)
            Posterior probability that ``|LFC| >= delta``, and its complement.
        ``proba_m1``, ``proba_m2`` (``"vanilla"``)
            Posterior probability that ``ρ1 > ρ2``, and its complement.
        ``bayes_factor``
            Natural-log Bayes factor ``log(p / (1 - p))`` of ``proba_de`` (``"change"``) or
            ``proba_m1`` (``"vanilla"``).
        ``lfc_mean``, ``lfc_median``, ``lfc_std``, ``lfc_min``, ``lfc_max``
            Posterior summaries of the log2 fold change (group 1 over group 2; positive means higher
            in group 1).
        ``scale1``, ``scale2``
            Mean sampled normalized expression (proportion of a cell's counts) in each group.
        ``raw_mean1``, ``raw_mean2``, ``non_zeros_proportion1``, ``non_zeros_proportion2``,
        ``raw_normalized_mean1``, ``raw_normalized_mean2``
            Observed counts of each group's measured cells: mean count, fraction of cells with a
            nonzero count, mean count per 10k counts.
        ``is_de_fdr_<fdr_target>`` (``"change"``), e.g. ``is_de_fdr_0.05``
            Called DE under posterior expected FDR control at ``fdr_target``.
        ``delta`` (``"change"``), ``pseudocount``
            The values used.
        ``n_cells_measured1``, ``n_cells_measured2``
            Cells of each group measured in the feature. Under a feature mask
            (``Modality(measured_key=...)``) a feature's draws and raw statistics come from these
            cells only; where a group has none, its draws are imputed from all its cells.
        ``group1``, ``group2``
            The compared groups (``"rest"`` when ``group2`` is ``None``).

    Raises
    ------
    InputError
        For an unknown ``groupby`` column, group, mode or modality; an empty group; or invalid
        ``delta``, ``n_samples`` or ``fdr_target``.

    Examples
    --------
    >>> de = scamort.differential.differential_expression(model, groupby="leiden", group1="3")
    >>> de[de["is_de_fdr_0.05"] & (de.lfc_mean > 0)].head(10)  # markers of cluster 3
    """
    if mode not in MODES:
        raise InputError(f"mode={mode!r} is not supported; choose one of {', '.join(MODES)}.")
    if not is_whole_number(n_samples, 2):
        raise InputError(f"n_samples must be an integer >= 2, got {n_samples!r}.")
    if mode == "change" and not (is_real_number(delta) and delta > 0):
        raise InputError(f"delta must be positive (a log2 fold change), got {delta!r}.")
    if not (is_real_number(fdr_target) and 0 < fdr_target < 1):
        raise InputError(f"fdr_target must lie in (0, 1), got {fdr_target!r}.")
    if pseudocount is not None and not (is_real_number(pseudocount) and pseudocount >= 0):
        raise InputError(f"pseudocount must be >= 0 or None, got {pseudocount!r}.")
    if not is_whole_number(seed, 0):
        raise InputError(f"seed must be an integer >= 0, got {seed!r}.")
    source = model.adata if adata is None else adata
    if not is_mudata(source) and type(source).__name__ != "AnnData":
        raise InputError(f"Expected an AnnData or MuData, got {type(source).__name__}.")
    name = model.registry.modalities[0].name if modality is None else model.registry.modality(modality).name
    mask1, mask2, label1, label2 = _group_masks(source, groupby, group1, group2)
    if not model.is_trained:
        logger.warning("Differential expression with a model that has not been trained.")

    data = encode_cells(source, model.registry).to(model.device)
    measured = data.modalities[name].present.cpu().numpy()
    for label, mask in ((label1, mask1), (label2, mask2)):
        if not (mask & measured).any():
            logger.warning(
                "No cell of group %r was measured in modality %r: its expression is entirely imputed "
                "from the cells' other modalities, and its raw statistics are NaN.",
                label,
                name,
            )
    rng = np.random.default_rng(seed)
    codes = _batch_codes(model, batch_correction)
    scales = [
        _sample_scales(
            model,
            data,
            np.flatnonzero(mask),
            modality=name,
            n_samples=int(n_samples),
            batch_codes=codes,
            rng=rng,
        )
        for mask in (mask1, mask2)
    ]
    raw1, raw2 = (_raw_statistics(data, name, mask) for mask in (mask1, mask2))
    n_measured = restrict_to_measured(
        data.modalities[name],
        (mask1, mask2),
        scales,
        (raw1, raw2),
        sample=lambda cells: _sample_scales(
            model, data, cells, modality=name, n_samples=int(n_samples), batch_codes=codes, rng=rng
        ),
        raw_statistics=lambda cells: _raw_statistics(data, name, cells),
    )
    if pseudocount is None:
        pseudocount = estimate_pseudocount(
            scales[0],
            scales[1],
            np.nan_to_num(raw1["raw_mean"], nan=0.0) < _NOT_EXPRESSED_MEAN,
            np.nan_to_num(raw2["raw_mean"], nan=0.0) < _NOT_EXPRESSED_MEAN,
        )

    columns: dict[str, Any] = {}
    if mode == "change":
        stats = _by_feature_chunks(change_statistics, *scales, delta=delta, pseudocount=pseudocount)
        columns.update({k: stats[k] for k in ("proba_de", "proba_not_de", "bayes_factor")})
    else:
        columns.update(_by_feature_chunks(vanilla_statistics, *scales))
    # Effect sizes with a thousandfold smaller pseudocount, as scVI reports them.
    lfc = _by_feature_chunks(change_statistics, *scales, delta=1.0, pseudocount=1e-3 * pseudocount)
    columns.update({k: lfc[k] for k in ("lfc_mean", "lfc_median", "lfc_std", "lfc_min", "lfc_max")})
    columns["scale1"], columns["scale2"] = scales[0].mean(axis=0), scales[1].mean(axis=0)
    for key in ("raw_mean", "non_zeros_proportion", "raw_normalized_mean"):
        columns[f"{key}1"], columns[f"{key}2"] = raw1[key], raw2[key]
    if mode == "change":
        columns[f"is_de_fdr_{fdr_target}"] = fdr_de_flags(columns["proba_de"], fdr_target)
        columns["delta"] = float(delta)
    columns["pseudocount"] = float(pseudocount)
    columns["n_cells_measured1"], columns["n_cells_measured2"] = n_measured
    columns["group1"], columns["group2"] = label1, label2

    table = pd.DataFrame(columns, index=pd.Index(model.registry.modality(name).feature_names))
    evidence = table["proba_de"] if mode == "change" else table["bayes_factor"].abs()
    order = np.lexsort((-table["lfc_mean"].abs().to_numpy(), -evidence.to_numpy()))
    table = table.iloc[order]
    logger.info(
        "Differential expression (%s mode) of %s: %d vs %d cells, %d draws per group%s.",
        mode,
        f"{groupby}={label1!r} vs {label2!r}",
        int(mask1.sum()),
        int(mask2.sum()),
        n_samples,
        ", batch-corrected" if codes != [None] else "",
    )
    return table


def model_differential_expression(
    model: DifferentialModel,
    adata: ad.AnnData | None,
    groupby: str | None,
    group1: Any,
    group2: Any | None,
    mode: str,
    delta: float,
    batch_correction: bool,
    **options: Any,
) -> pd.DataFrame:
    """Bayesian differential expression between two groups of cells (``group2=None``: the rest).

    Posterior-sampled log fold changes, the probability of a change beyond ``delta`` (``mode=
    "change"``) or of higher expression (``"vanilla"``), Bayes factors and posterior expected FDR
    control; sorted by evidence. See :func:`scamort.differential.differential_expression` for the
    other ``options`` (``modality``, ``n_samples``, ``fdr_target``, ``seed``) and the columns.

    Parameters
    ----------
    adata
        Cells to use (default: the training data); any AnnData/MuData with the model's features.
    groupby
        ``.obs`` column defining the groups.
    group1, group2
        The groups compared (``group2=None``: all other cells).
    mode
        ``"change"`` (probability of ``|LFC| > delta``) or ``"vanilla"`` (probability of higher
        expression).
    delta
        Smallest absolute log fold change that counts as a change.
    batch_correction
        Average the expression over the model's batches (decoding each cell in every batch).
    **options
        Passed on: ``modality``, ``n_samples``, ``pseudocount``, ``fdr_target``, ``seed``.

    Returns
    -------
    DataFrame indexed by feature.
    """
    if groupby is None or group1 is None:
        raise InputError("differential_expression needs groupby= (an .obs column) and group1=.")
    return differential_expression(
        model,
        adata,
        groupby=groupby,
        group1=group1,
        group2=group2,
        mode=mode,
        delta=delta,
        batch_correction=batch_correction,
        **options,
    )
