"""Saving and loading a :class:`scamort.Model`: what is checked and restored around :mod:`scamort.io`.

:mod:`scamort.io` owns the format on disk (JSON spec, weights, atomic writes); this module checks what a
load attaches the model to, places the weights and turns a mismatch of weights and spec into one clear
sentence. :func:`save_model` carries ``Model.save``'s docstring and :func:`read_saved` ``Model.load``'s
(the facade shows them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import anndata as ad
import numpy as np
import pandas as pd
import torch

from scamort import io
from scamort.data import Registry
from scamort.data.sources import is_mudata
from scamort.errors import InputError
from scamort.module import VAE
from scamort.train import resolve_device
from scamort.train.checkpoint import state_dict_problem

__all__ = ["load_model", "read_saved", "restore_weights", "save_model"]

ModelT = TypeVar("ModelT")


def read_saved(dir_path: str | Path, adata: ad.AnnData, device: str) -> tuple[io.SavedModel, torch.device]:
    """Load a saved model onto ``adata`` (genes aligned by name; categories must be known).

    Parameters
    ----------
    dir_path
        A folder written by :meth:`save`.
    adata
        The data to attach: its features must include the model's (they are aligned by name) and
        its categorical columns may only hold categories the model knows.
    device
        Where to place the weights (``"auto"``: CUDA when available).

    Returns
    -------
    Model
        The loaded model, attached to ``adata``.

    Raises
    ------
    InputError
        If ``adata`` is not an AnnData/MuData, lacks the model's genes or has unseen categories;
        if the save format is incompatible; or if the weights are damaged or do not fit.
    FileNotFoundError
        If ``dir_path`` holds no ``model.json`` or no ``weights.pt``.
    """
    if not (is_mudata(adata) or isinstance(adata, ad.AnnData)):
        raise InputError(
            f"Model.load attaches the model to an AnnData or MuData (read the file first, e.g. "
            f"anndata.read_h5ad); got {type(adata).__name__}."
        )
    target_device = resolve_device(device)
    return io.load(dir_path), target_device


def load_model(cls: type[ModelT], dir_path: str | Path, adata: ad.AnnData, device: str) -> ModelT:
    """``Model.load``: a model of class ``cls`` from ``dir_path`` attached to ``adata`` (see
    :func:`read_saved`)."""
    saved, target_device = read_saved(dir_path, adata, device)
    model: Any = cls.__new__(cls)
    model._setup(adata, Registry.from_dict(saved.registry), saved.init_params)
    restore_weights(model.module, saved, dir_path, target_device)
    model.history = saved.history
    model.train_indices = saved.split.get("train_indices")
    model.validation_indices = saved.split.get("validation_indices")
    model.is_trained = saved.is_trained
    return model


def restore_weights(module: VAE, saved: io.SavedModel, dir_path: str | Path, device: torch.device) -> None:
    """Load the saved weights into ``module`` and place it on ``device`` in eval mode.

    Raises
    ------
    InputError
        If the weights do not fit the module that the saved spec describes.
    """
    problem = state_dict_problem(saved.state_dict, module.state_dict())
    if problem is not None:
        raise InputError(
            f"The weights in {dir_path} do not fit the model its model.json describes ({problem}); "
            "the file is damaged or the folder mixes files of different models: save the model again."
        )
    try:
        module.load_state_dict(saved.state_dict)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise InputError(
            f"The weights in {dir_path} do not fit the model its model.json describes ({detail}); "
            "the folder mixes files of different models: save the model again."
        ) from None
    module.to(device).eval()


def save_model(
    dir_path: str | Path,
    overwrite: bool,
    *,
    init_params: dict[str, Any],
    registry: Registry,
    module: VAE,
    history: pd.DataFrame | None,
    train_indices: np.ndarray | None,
    validation_indices: np.ndarray | None,
    is_trained: bool,
) -> None:
    """Write the model to ``dir_path`` (JSON spec + weights), atomically.

    Parameters
    ----------
    dir_path
        Folder to write (created; its parent must be writable).
    overwrite
        Replace an existing saved model (or fill an empty folder); a file or a folder of other
        files is never replaced. The previous model stays in place until the new one is complete.

    Raises
    ------
    FileExistsError
        If ``dir_path`` exists and ``overwrite`` is False, or it is not a saved model.
    """
    io.save(
        dir_path,
        overwrite=overwrite,
        init_params=init_params,
        registry=registry.to_dict(),
        state_dict=module.state_dict(),
        history=history,
        split={"train_indices": train_indices, "validation_indices": validation_indices},
        is_trained=is_trained,
    )
