"""The training loop: plain torch, AdamW, KL warm-up, validation split, early stopping, history."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from scamort.data.cell_data import CellData
from scamort.errors import InputError
from scamort.module import VAE
from scamort.train.config import TrainConfig

__all__ = ["NonFiniteLossError", "TrainingResult", "fit", "split_cells"]

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = (
    "epoch",
    "kl_weight",
    "train_loss",
    "train_elbo",
    "train_reconstruction",
    "train_kl",
    "validation_elbo",
    "validation_reconstruction",
    "validation_kl",
    "seconds",
)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the model keeps its last good weights."""


@dataclass(frozen=True)
class TrainingResult:
    """What :func:`fit` returns: the per-epoch history and the cells of each split."""

    history: pd.DataFrame
    train_indices: np.ndarray
    validation_indices: np.ndarray


def split_cells(n_cells: int, train_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split into training and validation positions (each sorted)."""
    n_validation = round((1 - train_size) * n_cells)
    if train_size < 1 and n_validation == 0:
        raise InputError(
            f"train_size={train_size} leaves no validation cell out of {n_cells}; use more cells or "
            "train_size=1.0 (no validation, no early stopping)."
        )
    if n_cells - n_validation < 1:
        raise InputError(f"train_size={train_size} leaves no training cell out of {n_cells}.")
    order = np.random.default_rng(seed).permutation(n_cells)
    return np.sort(order[n_validation:]), np.sort(order[:n_validation])


class _Totals:
    """Running per-cell sums of ELBO terms, kept on the device (no host sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(4, device=device)  # loss, elbo, reconstruction, kl
        self.n_cells = 0

    def add(self, loss: torch.Tensor, reconstruction: torch.Tensor, kl: torch.Tensor) -> None:
        self.sums += torch.stack(
            [
                loss * reconstruction.shape[0],
                (reconstruction - kl).sum(),
                reconstruction.sum(),
                kl.sum(),
            ]
        ).detach()
        self.n_cells += reconstruction.shape[0]

    def means(self) -> list[float]:
        return (self.sums / max(self.n_cells, 1)).tolist()


@torch.no_grad()
def _evaluate(module: VAE, data: CellData, index: torch.Tensor, batch_size: int) -> list[float]:
    module.eval()
    totals = _Totals(data.device)
    for batch in data.iterate(index, batch_size):
        terms = module.loss_terms(batch)
        totals.add(torch.zeros((), device=data.device), terms.total_reconstruction, terms.kl)
    module.train()
    return totals.means()[1:]


def fit(
    module: VAE,
    data: CellData,
    config: TrainConfig,
    *,
    device: torch.device,
    progress_bar: bool = True,
) -> TrainingResult:
    """Train ``module`` on ``data`` in place.

    Parameters
    ----------
    module
        The VAE; moved to ``device`` and left there.
    data
        All cells (training and validation); copied to ``device`` once.
    config
        Training options.
    device
        Where to train.
    progress_bar
        Show a tqdm bar over epochs with the current ELBOs.

    Returns
    -------
    The history (one row per epoch, columns ``HISTORY_COLUMNS``) and the split.

    Raises
    ------
    NonFiniteLossError
        If an epoch produced a non-finite loss; the module then holds the weights from before it.
    """
    train_np, validation_np = split_cells(data.n_cells, config.train_size, config.seed)
    torch.manual_seed(config.seed)
    data = data.to(device)
    module.to(device).train()
    train_index = torch.as_tensor(train_np, device=device)
    validation_index = torch.as_tensor(validation_np, device=device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
    )

    steps_per_epoch = math.ceil(len(train_np) / config.batch_size)
    warmup_steps = config.kl_warmup_epochs * steps_per_epoch
    step = 0
    best_elbo, best_state, epochs_since_best = -math.inf, None, 0
    rows: list[dict] = []
    epochs = tqdm(
        range(config.max_epochs),
        desc="training",
        unit="epoch",
        disable=not progress_bar,
        leave=False,
    )
    for epoch in epochs:
        started = time.perf_counter()
        last_good = copy.deepcopy(module.state_dict())
        totals = _Totals(device)
        order = train_index[torch.randperm(len(train_np), generator=generator, device=device)]
        for batch in data.iterate(order, config.batch_size):
            kl_weight = min(1.0, step / warmup_steps) if warmup_steps else 1.0
            terms = module.loss_terms(batch)
            loss = -terms.elbo(kl_weight).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals.add(loss, terms.total_reconstruction, terms.kl)
            step += 1
        train_loss, train_elbo, train_reconstruction, train_kl = totals.means()
        if not math.isfinite(train_loss):
            module.load_state_dict(last_good)
            raise NonFiniteLossError(
                f"Epoch {epoch + 1} produced a non-finite loss; the model keeps its weights from "
                "before that epoch. Check the data for extreme values or lower lr."
            )
        validation = (
            _evaluate(module, data, validation_index, config.validation_batch_size)
            if len(validation_np)
            else [math.nan] * 3
        )
        rows.append(
            dict(
                zip(
                    HISTORY_COLUMNS,
                    [
                        epoch + 1,
                        kl_weight,
                        train_loss,
                        train_elbo,
                        train_reconstruction,
                        train_kl,
                        *validation,
                        time.perf_counter() - started,
                    ],
                    strict=True,
                )
            )
        )
        epochs.set_postfix(train_elbo=f"{train_elbo:.1f}", validation_elbo=f"{validation[0]:.1f}")
        if config.early_stopping and len(validation_np) and step >= warmup_steps:
            if validation[0] > best_elbo:
                best_elbo, epochs_since_best = validation[0], 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                epochs_since_best += 1
                if epochs_since_best >= config.early_stopping_patience:
                    logger.info("early stopping at epoch %d", epoch + 1)
                    break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return TrainingResult(pd.DataFrame(rows, columns=HISTORY_COLUMNS), train_np, validation_np)
