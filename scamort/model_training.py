"""How :meth:`scamort.Model.train` runs: the options checked, the learning rate scaled, one or two stages.

The training loop itself is :func:`scamort.train.fit`; this module turns ``Model.train``'s keywords into
its :class:`~scamort.train.TrainConfig` (the learning rate follows the global batch size by the
``lr_scaling`` rule) and, with ``pretrain_modality``, runs the two stages (one modality alone, then all
with that modality's encoder frozen) and joins their histories. :func:`train`'s docstring is
``Model.train``'s (the facade shows it): the first four arguments are the model's parts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scamort._checks import check_whole_number
from scamort.data import CellData
from scamort.data.backed import BackedCellData
from scamort.errors import InputError
from scamort.label_calibration import calibrate
from scamort.model_setup import check_choice
from scamort.module import VAE
from scamort.train import TrainConfig, default_kl_warmup_epochs, default_max_epochs, fit, resolve_device
from scamort.train.checkpoint import load_checkpoint, run_fingerprint
from scamort.train.freeze import frozen
from scamort.train.loop import TrainingResult

__all__ = [
    "LR_SCALING_EXPONENTS",
    "PRETRAIN_FOLDER",
    "QUERY_TRAIN_DEFAULTS",
    "TrainDefaults",
    "defaults_for",
    "train",
]

#: ``lr_scaling`` rules: the learning rate is multiplied by ``(global batch / 128) ** exponent``.
LR_SCALING_EXPONENTS = {"sqrt": 0.5, "linear": 1.0, "none": 0.0}

#: Where ``train(pretrain_modality=..., checkpoint_dir=d)`` keeps the pretraining stage's checkpoint.
PRETRAIN_FOLDER = "pretrain"


@dataclass(frozen=True)
class TrainDefaults:
    """What ``Model.train`` uses for the options left at None.

    Attributes
    ----------
    lr, weight_decay, early_stopping_patience
        As :func:`train` takes them.
    kl_warmup_epochs
        None: a quarter of ``max_epochs``.
    max_epochs
        None: ``min(400, max(10, 8e6 / n_cells))``.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-6
    early_stopping_patience: int = 30
    kl_warmup_epochs: int | None = None
    max_epochs: int | None = None


#: A query model's (``Model.load_query_data``): the reference is trained, so no KL warm-up, and only
#: the new batches' weights learn, so a larger step, no weight decay, a short run and little patience.
QUERY_TRAIN_DEFAULTS = TrainDefaults(
    lr=1e-2, weight_decay=0.0, early_stopping_patience=5, kl_warmup_epochs=0, max_epochs=100
)


def defaults_for(init_params: Mapping[str, Any]) -> TrainDefaults:
    """The training defaults of a model with these ``init_params``: a query model's or the usual."""
    return QUERY_TRAIN_DEFAULTS if "query_mapping" in init_params else TrainDefaults()


def _derived(as_given: TrainConfig, lr_scaling: str, kl_warmup_epochs: int | None) -> TrainConfig:
    """The loop's configuration from the options as given: the learning rate scaled by the global batch
    (under torchrun each process takes ``batch_size``) and the KL warm-up defaulted to a quarter of the
    epochs."""
    global_batch = as_given.batch_size * int(os.environ.get("WORLD_SIZE", "1"))
    warmup = default_kl_warmup_epochs(as_given.max_epochs) if kl_warmup_epochs is None else kl_warmup_epochs
    return replace(
        as_given,
        lr=as_given.lr * (global_batch / 128) ** LR_SCALING_EXPONENTS[lr_scaling],
        kl_warmup_epochs=warmup,
    )


def train(
    module: VAE,
    data: CellData | BackedCellData,
    modality_names: Sequence[str],
    seed: int,
    *,
    max_epochs: int | None,
    batch_size: int,
    lr: float | None,
    weight_decay: float | None,
    train_size: float,
    early_stopping: bool,
    early_stopping_patience: int | None,
    device: str,
    kl_warmup_epochs: int | None,
    progress_bar: bool,
    checkpoint_dir: str | Path | None,
    checkpoint_every: int,
    lr_scaling: str,
    max_seconds: float | None,
    pretrain_modality: str | None,
    defaults: TrainDefaults = TrainDefaults(),
) -> TrainingResult:
    """Fit the model by minibatch stochastic variational inference.

    A second call continues from the current weights as a new run: a fresh optimizer, its own
    KL warm-up and epoch count, and a history that replaces ``self.history``. To resume an
    interrupted run exactly, use ``checkpoint_dir``.

    Parameters
    ----------
    max_epochs
        Passes over the training cells; default ``min(400, max(10, 8e6 / n_cells))`` (a query model
        of :meth:`load_query_data`: 100). A query model's defaults suit mapping: lr 1e-2, no
        weight decay, no KL warm-up, patience 5 (``scamort.model_training.QUERY_TRAIN_DEFAULTS``).
    batch_size
        Cells per gradient step.
    lr, weight_decay
        AdamW learning rate (for batches of 128 cells, see ``lr_scaling``; default 1e-3) and weight
        decay (default 1e-6). Only weights that learn are given to the optimizer.
    train_size
        Fraction of cells trained on; the rest forms the validation split.
    early_stopping, early_stopping_patience
        Stop once the validation ELBO has not improved for this many epochs after warm-up, keeping
        the best weights (default patience 30).
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    kl_warmup_epochs
        Epochs of linear KL warm-up to weight 1; default a quarter of ``max_epochs`` (with
        ``pretrain_modality``, in the first stage only).
    progress_bar
        Show a progress bar.
    checkpoint_dir, checkpoint_every
        Save a checkpoint (weights, optimizer, RNG states, history) every ``checkpoint_every``
        epochs, atomically. Calling ``train`` again with the same options and directory (e.g.
        after the process was killed) resumes from it; on CPU the result is identical to an
        uninterrupted run.
    lr_scaling
        How the learning rate follows the batch size, with ``B`` the global batch (``batch_size``
        times the number of torchrun processes): ``"linear"`` (default) uses ``lr * B / 128``;
        ``"sqrt"`` uses ``lr * sqrt(B / 128)`` (Adam's square-root rule: smaller steps at large
        batches); ``"none"`` uses ``lr`` as given. Batch 128 gets ``lr`` under every rule. The
        held-out ELBO under each rule and batch size is measured by ``benchmarks/scale_cpu.py``
        (``benchmarks/README.md``).
    max_seconds
        Wall-clock budget: stop after the first epoch that ends past it (with
        ``pretrain_modality``, the budget of each stage).
    pretrain_modality
        With several modalities: first train on this modality alone (every other one masked, as
        for cells not measured in it; cells lacking it sit this stage out), so that it alone
        lays out the latent space; then train on all modalities, with this modality's encoder
        kept as pretrained, so that the other experts learn to place cells in that space. Each
        stage is a run as described above (``max_epochs``, early stopping) on the same
        training/validation split; only the first warms the KL weight up, since the second
        starts from a model trained at KL weight 1 (warming up again from 0 lets the posteriors
        narrow and the other experts' variation into the latent). Use it when one modality
        carries the structure of interest and another adds little to it (e.g. RNA with a few
        hundred ATAC peaks); keep the default when the other modality resolves structure of its
        own (as protein does on CITE-seq) and for unpaired integration, where the short second
        stage mixes the cells measured in one modality less. ``benchmarks/multimodal.py`` measures
        both cases (``benchmarks/README.md``). Default None: one run on all modalities.

    Returns
    -------
    The training history (also ``self.history``): per epoch ``kl_weight``, ``train_loss``,
    ``train_elbo``, ``train_reconstruction``, ``train_kl``, ``validation_elbo``,
    ``validation_reconstruction``, ``validation_kl`` (per-cell means; validation NaN when
    ``train_size == 1``) and ``seconds``. With ``pretrain_modality`` both stages, one after the
    other (``epoch`` counting on), and a ``stage`` column: ``"pretrain"`` or ``"all"``.
    """
    if max_epochs is None:
        max_epochs = defaults.max_epochs or default_max_epochs(data.n_cells)
    lr = defaults.lr if lr is None else lr
    weight_decay = defaults.weight_decay if weight_decay is None else weight_decay
    if early_stopping_patience is None:
        early_stopping_patience = defaults.early_stopping_patience
    if kl_warmup_epochs is None:
        kl_warmup_epochs = defaults.kl_warmup_epochs
    if not any(parameter.requires_grad for parameter in module.parameters()):
        raise InputError(
            "This query model has nothing to learn: its cells are all of the reference's batches and "
            "categories, whose weights stay frozen; use it without train()."
        )
    check_choice(lr_scaling, tuple(LR_SCALING_EXPONENTS), "lr_scaling")
    check_whole_number(checkpoint_every, "checkpoint_every")
    as_given = TrainConfig(  # checks the options as the user gave them, before any is derived
        max_epochs=max_epochs,
        batch_size=batch_size,
        lr=lr,
        max_seconds=max_seconds,
        weight_decay=weight_decay,
        train_size=train_size,
        early_stopping=early_stopping,
        early_stopping_patience=early_stopping_patience,
        kl_warmup_epochs=0 if kl_warmup_epochs is None else kl_warmup_epochs,
        seed=seed,
    )
    config = _derived(as_given, lr_scaling, kl_warmup_epochs)
    pretrain = pretrain_modality
    if pretrain is not None:
        if len(modality_names) < 2:
            raise InputError(
                "pretrain_modality needs a model of several modalities; this one has only "
                f"{modality_names[0]!r}, so train it without pretrain_modality."
            )
        check_choice(pretrain, modality_names, "pretrain_modality")
    run = partial(
        fit,
        module,
        data,
        device=resolve_device(device),
        progress_bar=progress_bar,
        checkpoint_every=int(checkpoint_every),
    )
    if pretrain is None:
        single = run(config, checkpoint_dir=checkpoint_dir)
        calibrate(module, data, single.train_indices, single.validation_indices)
        return single
    first_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / PRETRAIN_FOLDER
    second = replace(config, kl_warmup_epochs=0)
    if checkpoint_dir is not None:  # the first stage's own is checked as it starts
        load_checkpoint(checkpoint_dir, second, run_fingerprint(module, data), module)
    pretraining = run(config, checkpoint_dir=first_dir, modalities=(pretrain,))
    with frozen(module.encoders[pretrain]):
        result = run(second, checkpoint_dir=checkpoint_dir)
    history = pd.concat(
        [pretraining.history.assign(stage="pretrain"), result.history.assign(stage="all")],
        ignore_index=True,
    )
    history["epoch"] = np.arange(1, len(history) + 1)
    calibrate(module, data, result.train_indices, result.validation_indices)
    return TrainingResult(history, result.train_indices, result.validation_indices)
