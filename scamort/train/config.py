"""Training options as a frozen dataclass: every option named, every value checked at once."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scamort._checks import is_real_number, is_whole_number
from scamort.errors import InputError

__all__ = [
    "DEFAULT_ADAM_EPS",
    "DEFAULT_DECODER_ADAM_EPS",
    "TrainConfig",
    "default_kl_warmup_epochs",
    "default_max_epochs",
    "resolve_device",
]

#: Default AdamW ``eps`` of every parameter but the count decoders' output layers (see :class:`TrainConfig`).
DEFAULT_ADAM_EPS = 1e-8
#: Default AdamW ``eps`` of the count decoders' output layers (see :class:`TrainConfig`).
DEFAULT_DECODER_ADAM_EPS = 0.1


def default_max_epochs(n_cells: int) -> int:
    """Epoch budget for ``n_cells`` cells: about 8M cell visits, between 10 and 400 epochs.

    Small data sets get many epochs (early stopping ends them), large ones a few.
    """
    return int(min(400, max(10, round(8_000_000 / max(n_cells, 1)))))


def default_kl_warmup_epochs(max_epochs: int) -> int:
    """KL warm-up for a run of ``max_epochs``: a quarter of it (at least 1 epoch)."""
    return max(1, max_epochs // 4)


def resolve_device(device: str | torch.device) -> torch.device:
    """See :func:`scamort.devices.resolve_device` (kept here for existing imports)."""
    from scamort.devices import resolve_device as resolve

    return resolve(device)


@dataclass(frozen=True)
class TrainConfig:
    """Options of :func:`scamort.train.fit`.

    Attributes
    ----------
    max_epochs
        Passes over the training cells.
    batch_size
        Cells per gradient step.
    lr, weight_decay
        AdamW learning rate and decoupled weight decay.
    adam_eps, decoder_adam_eps
        AdamW's ``eps``, added to the root of the second-moment estimate: ``decoder_adam_eps``
        (default ``0.1``) for the output layers of the count decoders (``nb``, ``zinb``,
        ``poisson``), ``adam_eps`` (default ``1e-8``, plain AdamW) for all other parameters;
        scvi-tools uses 0.01 for all. A large value damps the steps of weights whose gradients are
        small and noisy, such as a decoder's rows for rarely expressed genes, and so regularises
        (see :mod:`scamort.train.optimizer`).
    train_size
        Fraction of cells trained on; the rest is the validation split (early stopping, history).
    early_stopping, early_stopping_patience
        Stop when the validation ELBO has not improved for this many epochs after KL warm-up, and
        keep the best weights.
    kl_warmup_epochs
        Epochs over which the KL weight rises linearly from 0 to 1 (per step); 0 means weight 1 at once.
    seed
        Seeds the split, the shuffling, dropout and the reparameterisation noise.
    validation_batch_size
        Cells per forward pass when evaluating the validation split.
    max_seconds
        Stop after the first epoch that ends past this wall-clock budget (None: no budget).
    """

    max_epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-6
    adam_eps: float = DEFAULT_ADAM_EPS
    decoder_adam_eps: float = DEFAULT_DECODER_ADAM_EPS
    train_size: float = 0.9
    early_stopping: bool = True
    early_stopping_patience: int = 30
    kl_warmup_epochs: int = 0
    seed: int = 0
    validation_batch_size: int = 2048
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_epochs", "batch_size", "kl_warmup_epochs", "early_stopping_patience", "seed"):
            value = getattr(self, name)
            if not is_whole_number(value):
                raise InputError(f"{name} must be a whole number, got {value!r}.")
        for name in ("lr", "weight_decay", "adam_eps", "decoder_adam_eps", "train_size"):
            value = getattr(self, name)
            if not is_real_number(value, finite=True):
                raise InputError(f"{name} must be a finite number, got {value!r}.")
        seconds = self.max_seconds
        checks = [
            (self.max_epochs >= 1, f"max_epochs must be at least 1, got {self.max_epochs}."),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}."),
            (self.lr > 0, f"lr must be positive, got {self.lr}."),
            (self.adam_eps > 0, f"adam_eps must be positive, got {self.adam_eps}."),
            (
                self.decoder_adam_eps > 0,
                f"decoder_adam_eps must be positive, got {self.decoder_adam_eps}.",
            ),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}."),
            (0 < self.train_size <= 1, f"train_size must be in (0, 1], got {self.train_size}."),
            (self.kl_warmup_epochs >= 0, "kl_warmup_epochs must be >= 0."),
            (self.early_stopping_patience >= 1, "early_stopping_patience must be >= 1."),
            (
                seconds is None or (is_real_number(seconds) and seconds > 0),
                f"max_seconds must be a positive number or None, got {seconds!r}.",
            ),
            (
                isinstance(self.early_stopping, bool),
                f"early_stopping must be True or False, got {self.early_stopping!r}.",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
