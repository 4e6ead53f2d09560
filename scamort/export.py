"""Write a trained model's results into AnnData and out to files.

This module is the one place in scamort that writes into an :class:`~anndata.AnnData`. It follows
scanpy's conventions: functions take ``adata`` first, write to ``.obsm[key_added]`` and
``.uns[key_added]["params"]``, and return a copy only when ``copy=True``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
from scipy import sparse

from scamort._version import __version__
from scamort.errors import InputError

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "EMBEDDING_SUFFIXES",
    "amortization_gap",
    "check_key_added",
    "embed",
    "embedding_frame",
    "write_embedding",
]

logger = logging.getLogger(__name__)

#: File suffixes :func:`write_embedding` understands, mapped to the format written.
EMBEDDING_SUFFIXES: dict[str, str] = {".csv": "csv", ".parquet": "parquet"}


class _LatentModel(Protocol):
    """What :func:`embed` needs from a model (satisfied by :class:`scamort.Model`)."""

    @property
    def init_params(self) -> Mapping[str, Any]:
        """The model's constructor options."""
        ...

    is_trained: bool

    def get_latent_representation(
        self, adata: AnnData | None = None, *, refine_steps: int = 0
    ) -> np.ndarray: ...


def embed(
    adata: AnnData,
    model: _LatentModel,
    *,
    key_added: str = "X_scamort",
    refine_steps: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Store the model's latent representation of each cell in ``adata``.

    The representation is the mean of the approximate posterior q(z | x) for every cell of
    ``adata`` (training cells or new query cells with the same genes), optionally refined per cell
    first. Afterwards ``sc.pp.neighbors(adata, use_rep=key_added)`` builds a neighbour graph on it.

    Parameters
    ----------
    adata
        Cells to embed, with the genes (and layer / covariate columns) the model was set up with.
    model
        A trained :class:`scamort.Model`.
    key_added
        Key under which the embedding and its parameters are stored.
    refine_steps
        Refine each cell's posterior by this many gradient steps on its own ELBO before taking its
        mean (semi-amortized inference, see :meth:`scamort.Model.refine`); 0 uses the encoders'.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData | None
        ``None`` when ``copy=False`` (``adata`` is modified in place), else the modified copy.
        These keys are written, and nothing else is touched:

        ``.obsm[key_added]``
            Posterior means, shape ``(n_cells, n_latent)``, float32.
        ``.uns[key_added]["params"]``
            ``{"representation": "posterior_mean", "refine_steps": ..., "scamort_version": ...,
            "init_params": {...}}``; ``init_params`` holds the model's constructor
            arguments (those left at ``None`` are omitted: older h5ad writers cannot store
            ``None``).
    """
    check_key_added(key_added)
    if not model.is_trained:
        logger.warning("Embedding with a model that has not been trained; call model.train() first.")
    latent = np.asarray(model.get_latent_representation(adata, refine_steps=refine_steps), dtype=np.float32)
    if latent.ndim != 2 or latent.shape[0] != adata.n_obs:
        msg = (
            f"The model returned a representation of shape {latent.shape}, "
            f"expected ({adata.n_obs}, n_latent)."
        )
        raise ValueError(msg)
    target = adata.copy() if copy else adata
    target.obsm[key_added] = latent
    target.uns[key_added] = {"params": _embedding_params(model, refine_steps)}
    logger.info("Stored a %d-dimensional embedding in .obsm[%r].", latent.shape[1], key_added)
    return target if copy else None


def check_key_added(key_added: Any) -> None:
    """Refuse a key that an .h5ad file cannot store (empty, or with a ``/``, its path separator).

    Parameters
    ----------
    key_added
        The ``.obsm`` / ``.obs`` / ``.uns`` key about to be written.

    Raises
    ------
    InputError
        If the key is not a non-empty string without ``/``.
    """
    if not isinstance(key_added, str) or not key_added or "/" in key_added:
        raise InputError(
            f"key_added must be a non-empty string without '/' (an .h5ad file cannot store it); got "
            f"{key_added!r}."
        )


def _embedding_params(model: _LatentModel, refine_steps: int) -> dict[str, Any]:
    """The ``.uns[key]["params"]`` record for an embedding made with ``model``."""
    return {
        "representation": "posterior_mean",
        "refine_steps": int(refine_steps),
        "scamort_version": __version__,
        "init_params": _drop_none(dict(model.init_params)),
    }


def _drop_none(params: Mapping[str, Any]) -> dict[str, Any]:
    """Copy ``params`` recursively without ``None`` values, and with tuples as lists."""
    clean: dict[str, Any] = {}
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            value = _drop_none(value)
        elif isinstance(value, tuple | list):
            value = list(value)
        clean[str(name)] = value
    return clean


def write_embedding(
    adata: AnnData,
    path: str | os.PathLike[str],
    *,
    key: str = "X_scamort",
) -> Path:
    """Write ``adata.obsm[key]`` to a CSV or Parquet file, one row per cell.

    The format is chosen by the file suffix (``.csv`` or ``.parquet``). Rows are indexed by
    ``adata.obs_names``; columns are named ``f"{key}_{i}"`` for ``i = 0 .. n_dims - 1`` (or keep
    their names when ``.obsm[key]`` is a DataFrame). Reading back with ``pd.read_parquet(path)``
    or ``pd.read_csv(path, index_col=0, float_precision="round_trip")`` gives the same numbers
    (pandas' default CSV float parser may change the last digit).

    Parameters
    ----------
    adata
        Annotated data holding the embedding.
    path
        Output file; its suffix picks the format. Parquet needs ``pyarrow``.
    key
        Key of the embedding in ``adata.obsm``.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    ValueError
        If the suffix is not one of ``.csv`` / ``.parquet``.
    KeyError
        If ``adata.obsm`` has no ``key``.
    """
    path = Path(path)
    file_format = EMBEDDING_SUFFIXES.get(path.suffix.lower())
    if file_format is None:
        allowed = ", ".join(EMBEDDING_SUFFIXES)
        msg = f"Cannot write an embedding to '{path.name}': use a file name ending in {allowed}."
        raise ValueError(msg)
    frame = embedding_frame(adata, key=key)
    if file_format == "csv":
        frame.to_csv(path)
    else:
        frame.to_parquet(path)
    logger.info("Wrote .obsm[%r] (%d cells x %d dims) to %s.", key, *frame.shape, path)
    return path


def embedding_frame(adata: AnnData, *, key: str = "X_scamort") -> pd.DataFrame:
    """Return ``adata.obsm[key]`` as a DataFrame indexed by ``adata.obs_names``.

    Parameters
    ----------
    adata
        Annotated data holding the embedding.
    key
        Key of the embedding in ``adata.obsm``.

    Returns
    -------
    pandas.DataFrame
        Shape ``(n_cells, n_dims)``, columns ``f"{key}_{i}"``.
    """
    if key not in adata.obsm:
        available = ", ".join(repr(k) for k in adata.obsm) or "none"
        msg = f"No embedding {key!r} in adata.obsm (available keys: {available})."
        raise KeyError(msg)
    values = adata.obsm[key]
    index = pd.Index(adata.obs_names, name=adata.obs_names.name or "obs_names")
    if isinstance(values, pd.DataFrame):
        frame = values.copy()
        frame.columns = [str(column) for column in frame.columns]
        frame.index = index
        return frame
    matrix = values.toarray() if sparse.issparse(values) else np.asarray(values)
    matrix = matrix.reshape(matrix.shape[0], -1)
    columns = [f"{key}_{i}" for i in range(matrix.shape[1])]
    return pd.DataFrame(matrix, index=index, columns=columns)


def amortization_gap(
    adata: AnnData,
    model: Any,
    *,
    key_added: str = "scamort_amortization_gap",
    steps: tuple[int, ...] = (5, 20, 50),
    n_optimum_steps: int = 200,
    copy: bool = False,
) -> AnnData | None:
    """Measure each cell's amortization gap (see :meth:`scamort.Model.amortization_gap`) and store it.

    Parameters
    ----------
    adata
        Cells to measure, with the model's genes.
    model
        A trained :class:`scamort.Model`.
    key_added
        Key of the results.
    steps, n_optimum_steps
        Refinement steps of the curve, and steps of the near-optimum.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData | None
        ``None`` when ``copy=False``, else the modified copy. Keys written:

        ``.obs[key_added]``
            Per-cell gap (near-optimum ELBO minus the encoder's), in nats.
        ``.obsm[key_added + "_curve"]``
            Per-cell ELBO at step 0 (the encoder) and at each of ``steps``, ``(n_cells, 1 + n_steps)``.
        ``.uns[key_added]``
            ``{"params": {...}, "summary": {...}}`` (mean closure per step, gap quantiles, timings).
    """
    check_key_added(key_added)
    gap = model.amortization_gap(adata, steps=steps, n_optimum_steps=n_optimum_steps)
    target = adata.copy() if copy else adata
    target.obs[key_added] = gap.gap
    target.obsm[f"{key_added}_curve"] = np.asarray(gap.elbo, dtype=np.float32)
    target.uns[key_added] = {
        "params": {
            "steps": list(gap.steps),
            "n_optimum_steps": int(n_optimum_steps),
            "scamort_version": __version__,
        },
        "summary": _drop_none(gap.summary()),
    }
    return target if copy else None
