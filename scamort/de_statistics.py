"""The statistics of Bayesian differential expression: pure functions of paired posterior samples.

:func:`scamort.differential.differential_expression` draws normalized-expression samples of two groups
from a model and hands them to these functions; they know nothing of models or AnnData, so each is
tested against its definition on arrays.
"""

from __future__ import annotations

import numpy as np

from scamort.errors import InputError

__all__ = [
    "change_statistics",
    "estimate_pseudocount",
    "fdr_de_flags",
    "posterior_expected_fdr",
    "vanilla_statistics",
]

#: Added inside the Bayes factor's logarithms so that probabilities of 0 or 1 stay finite.
_EPS = 1e-8


def change_statistics(
    scales1: np.ndarray, scales2: np.ndarray, *, delta: float, pseudocount: float = 0.0
) -> dict[str, np.ndarray]:
    """Posterior log2 fold-change statistics of paired normalized-expression samples.

    Parameters
    ----------
    scales1, scales2
        Paired samples of normalized expression of the two groups, each ``(n_pairs, n_features)``.
    delta
        Half-width of the no-change region on the log2 scale: a pair counts as a change where
        ``|LFC| >= delta``.
    pseudocount
        Added to both scales before the logarithm (damps fold changes of unexpressed genes).

    Returns
    -------
    dict of str to numpy.ndarray
        Arrays of shape ``(n_features,)``: ``proba_de`` (``P(|LFC| >= delta)``), ``proba_not_de``,
        ``bayes_factor`` (``log(proba_de / proba_not_de)``), ``lfc_mean``, ``lfc_median``,
        ``lfc_std``, ``lfc_min``, ``lfc_max``.
    """
    _check_pairs(scales1, scales2)
    if not delta > 0:
        raise InputError(f"delta must be positive (a log2 fold change), got {delta!r}.")
    lfc = np.log2(scales1 + pseudocount) - np.log2(scales2 + pseudocount)
    proba_de = np.mean(np.abs(lfc) >= delta, axis=0)
    return {
        "proba_de": proba_de,
        "proba_not_de": 1.0 - proba_de,
        "bayes_factor": np.log(proba_de + _EPS) - np.log(1.0 - proba_de + _EPS),
        "lfc_mean": lfc.mean(axis=0),
        "lfc_median": np.median(lfc, axis=0),
        "lfc_std": lfc.std(axis=0),
        "lfc_min": lfc.min(axis=0),
        "lfc_max": lfc.max(axis=0),
    }


def vanilla_statistics(scales1: np.ndarray, scales2: np.ndarray) -> dict[str, np.ndarray]:
    """Posterior probability that group 1 expresses each feature more than group 2.

    Parameters
    ----------
    scales1, scales2
        Paired samples of normalized expression of the two groups, each ``(n_pairs, n_features)``.

    Returns
    -------
    dict of str to numpy.ndarray
        Arrays of shape ``(n_features,)``: ``proba_m1`` (``P(ρ1 > ρ2)``), ``proba_m2``
        (``1 - proba_m1``) and ``bayes_factor`` (``log(proba_m1 / proba_m2)``).
    """
    _check_pairs(scales1, scales2)
    proba_m1 = np.mean(scales1 > scales2, axis=0)
    return {
        "proba_m1": proba_m1,
        "proba_m2": 1.0 - proba_m1,
        "bayes_factor": np.log(proba_m1 + _EPS) - np.log(1.0 - proba_m1 + _EPS),
    }


def posterior_expected_fdr(proba_de: np.ndarray) -> np.ndarray:
    """Posterior expected false discovery rate of calling the ``k`` most probable features DE.

    Parameters
    ----------
    proba_de
        Posterior probability of differential expression per feature, ``(n_features,)``.

    Returns
    -------
    numpy.ndarray
        ``(n_features,)``: entry ``k - 1`` is the mean of ``1 - proba_de`` over the ``k`` features
        with the highest ``proba_de`` (features in decreasing order of ``proba_de``).
    """
    ordered = np.sort(np.asarray(proba_de, dtype=np.float64))[::-1]
    return np.cumsum(1.0 - ordered) / np.arange(1, ordered.size + 1)


def fdr_de_flags(proba_de: np.ndarray, fdr_target: float = 0.05) -> np.ndarray:
    """Call features DE while the posterior expected FDR stays at most ``fdr_target``.

    The features are sorted by ``proba_de`` (decreasing) and the longest prefix whose posterior
    expected FDR (:func:`posterior_expected_fdr`) is ``<= fdr_target`` is flagged.

    Parameters
    ----------
    proba_de
        Posterior probability of differential expression per feature, ``(n_features,)``.
    fdr_target
        Largest tolerated posterior expected FDR, in ``(0, 1)``.

    Returns
    -------
    numpy.ndarray
        Boolean ``(n_features,)`` in the input order.
    """
    if not 0 < fdr_target < 1:
        raise InputError(f"fdr_target must lie in (0, 1), got {fdr_target!r}.")
    proba_de = np.asarray(proba_de, dtype=np.float64)
    order = np.argsort(-proba_de, kind="stable")
    below = np.flatnonzero(posterior_expected_fdr(proba_de) <= fdr_target)
    n_called = 0 if below.size == 0 else int(below[-1]) + 1
    flags = np.zeros(proba_de.size, dtype=bool)
    flags[order[:n_called]] = True
    return flags


def estimate_pseudocount(
    scales1: np.ndarray,
    scales2: np.ndarray,
    not_expressed1: np.ndarray,
    not_expressed2: np.ndarray,
    quantile: float = 0.9,
) -> float:
    """The pseudocount scVI's ``change`` mode estimates from genes a group does not express.

    For each group, the ``quantile`` of the largest sampled scale among features the group does not
    express; the larger of the two, divided by the number of features (at least ``1e-10``).

    Parameters
    ----------
    scales1, scales2
        Normalized-expression samples of the groups, each ``(n_samples, n_features)``.
    not_expressed1, not_expressed2
        Boolean ``(n_features,)``: features (nearly) absent from the group's counts.
    quantile
        Quantile of the per-feature maxima.

    Returns
    -------
    float
        The pseudocount.
    """
    levels = []
    for scales, absent in ((scales1, not_expressed1), (scales2, not_expressed2)):
        absent = np.asarray(absent, dtype=bool)
        levels.append(float(np.quantile(scales.max(axis=0)[absent], quantile)) if absent.any() else 1e-10)
    return max(1e-10, max(levels) / scales1.shape[1])


def _check_pairs(scales1: np.ndarray, scales2: np.ndarray) -> None:
    if scales1.shape != scales2.shape or scales1.ndim != 2:
        raise ValueError(
            f"Paired samples must share one 2-d shape (n_pairs, n_features); got {scales1.shape} "
            f"and {scales2.shape}."
        )
