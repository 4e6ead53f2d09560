"""The reference cells' embedding, kept in a saved model folder for drawing query cells on it.

A user who maps a query onto a saved reference (:meth:`scamort.Model.load_query_data`) has the folder
but not the reference's cells. :func:`save_reference_embedding` writes, next to ``model.json``, the
reference cells' latent means (float32) with their names, batches and optionally a label column
(``reference_embedding.npz``, compressed, atomically: a temporary file renamed into place);
:func:`load_reference_embedding` reads it back, validated against the folder's model, as an AnnData
with ``.obsm["X_scamort"]``: concatenate it with the mapped query for a joint UMAP. It takes
``4 × n_latent`` bytes per cell for the embedding (before compression) plus the cells' names and labels.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from scamort import io
from scamort.data import Registry
from scamort.errors import InputError

__all__ = ["EMBEDDING_FILE", "load_reference_embedding", "save_reference_embedding"]

#: The file in a saved model folder holding the reference cells' embedding.
EMBEDDING_FILE = "reference_embedding.npz"
_KEYS = ("latent", "obs_names", "batch", "labels", "labels_key")


def save_reference_embedding(model: Any, dir_path: str | Path, *, labels_key: str | None = None) -> Path:
    """Write ``model``'s cells' latent means into the folder ``model`` was saved to.

    Parameters
    ----------
    model
        The trained reference model, attached to its own cells.
    dir_path
        The folder ``model.save`` wrote (the embedding is checked to fit its model).
    labels_key
        An ``.obs`` column of the model's cells to keep with them (e.g. cell types); default the
        model's ``labels_key`` if it has one.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    InputError
        If ``dir_path`` is not a saved model of ``model``'s features and latent size, or ``labels_key``
        is not a column of the model's cells.
    """
    saved = io.load(dir_path)
    if Registry.from_dict(saved.registry).modalities != model.registry.modalities or (
        saved.init_params["n_latent"] != model.n_latent
    ):
        raise InputError(f"{dir_path} holds another model than this one; save this model there first.")
    key = labels_key if labels_key is not None else model.registry.labels_key
    obs = model.adata.obs
    if key is not None and key not in obs.columns:
        raise InputError(f"labels_key {key!r} is not a column of the model's cells' .obs.")
    batch_key = model.registry.batch_key
    arrays: dict[str, Any] = {
        "latent": np.asarray(model.get_latent_representation(), dtype=np.float32),
        "obs_names": np.asarray(model.adata.obs_names, dtype=str),
        "batch": np.asarray(obs[batch_key] if batch_key else np.full(obs.shape[0], "0"), dtype=str),
        "labels": np.asarray(obs[key], dtype=str) if key else np.zeros(0, dtype=str),
        "labels_key": np.asarray(key or "", dtype=str),
    }
    target = Path(dir_path) / EMBEDDING_FILE
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".reference_embedding.", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez_compressed(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def load_reference_embedding(dir_path: str | Path, key_added: str = "X_scamort") -> ad.AnnData:
    """The reference cells' embedding saved in a model folder, as an AnnData.

    Parameters
    ----------
    dir_path
        A saved model folder into which :func:`save_reference_embedding` wrote.
    key_added
        The ``.obsm`` key of the embedding.

    Returns
    -------
    AnnData
        One row per reference cell and no features; ``.obsm[key_added]`` the latent means
        ``(n_cells, n_latent)`` float32; ``.obs["batch"]`` and, if saved, the label column.

    Raises
    ------
    InputError
        If the folder has no reference embedding, or it is damaged or does not fit the model.
    """
    saved = io.load(dir_path)
    path = Path(dir_path) / EMBEDDING_FILE
    if not path.is_file():
        raise InputError(
            f"{dir_path} holds no reference embedding ({EMBEDDING_FILE}); write one with "
            "scamort.reference_embedding.save_reference_embedding(model, folder)."
        )
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in _KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        raise InputError(f"{path} is damaged or not a reference embedding; write it again.") from None
    latent, names = arrays["latent"], arrays["obs_names"]
    n_cells = names.shape[0]
    problems = [
        latent.dtype != np.float32 or latent.shape != (n_cells, saved.init_params["n_latent"]),
        arrays["batch"].shape != (n_cells,),
        arrays["labels"].shape not in ((0,), (n_cells,)),
        not np.isfinite(latent).all(),
    ]
    if any(problems):
        raise InputError(f"{path} does not fit the model saved in {dir_path}; write it again.")
    obs = pd.DataFrame({"batch": pd.Categorical(arrays["batch"])}, index=pd.Index(names, dtype=str))
    labels_key = str(arrays["labels_key"])
    if labels_key:
        obs[labels_key] = pd.Categorical(arrays["labels"])
    adata = ad.AnnData(obs=obs)
    adata.obsm[key_added] = latent
    return adata
