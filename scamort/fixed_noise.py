"""Counter-based Monte Carlo noise, and the per-cell ELBO under given draws (used by refinement).

:func:`fixed_normal_noise` draws standard normals that depend only on ``(seed, stream, the cell's id,
sample, latent dimension)``, where the id is a stable hash of the cell's name
(:func:`scamort.data.cell_data.cell_keys`). A cell's draws are therefore the same alone or in any
minibatch, in any order or subset of an AnnData, on any device, in any run.
:func:`elbo_with_fixed_noise` evaluates each cell's ELBO (KL weight 1) under such draws with the model
frozen; :mod:`scamort.refine` optimises the same quantity per cell.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from scamort.data.backed import EncodedCells
from scamort.data.cell_data import Minibatch
from scamort.inference import MAX_DECODED_ROWS, posterior_rows, repeat_minibatch
from scamort.module import VAE, Posterior, gaussian_kl
from scamort.train.freeze import frozen as frozen_weights

__all__ = [
    "EVALUATION_STREAM",
    "TRAINING_STREAM",
    "Repeats",
    "cell_chunks",
    "elbo_with_fixed_noise",
    "fixed_normal_noise",
    "frozen",
    "noise_elbo",
]

#: Noise stream of the ``"fixed"`` objective (``"per_step"`` uses stream ``2 + step``).
TRAINING_STREAM = 0
#: Noise stream of the recorded (evaluation) ELBOs, independent of the optimised draws.
EVALUATION_STREAM = 1

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``(x * constant) mod 2**32`` for int64 ``x`` in ``[0, 2**32)``, without int64 overflow."""
    low, high = x & 0xFFFF, x >> 16
    return (low * constant + (((high * constant) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser (a bijection with full avalanche) on int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def fixed_normal_noise(
    cell_ids: torch.Tensor, n_samples: int, n_latent: int, seed: int, stream: int
) -> torch.Tensor:
    """Standard normal draws that depend only on each cell's id, ``seed`` and ``stream``.

    A counter-based generator (hash, then Box-Muller in float64): a cell's draws are the same in
    any minibatch and on any device, and its first ``k`` samples do not depend on ``n_samples``.

    Parameters
    ----------
    cell_ids
        Non-negative integer ids of the cells (stable keys of their names, or their positions in the
        data), shape ``(batch,)``.
    n_samples, n_latent
        Draws per cell and latent dimension.
    seed, stream
        Each ``(seed, stream)`` pair gives independent draws.

    Returns
    -------
    Float32 tensor of shape ``(n_samples, batch, n_latent)`` on ``cell_ids``' device.
    """
    device = cell_ids.device
    key = _mix32(torch.tensor((seed * 0x9E3779B9 + stream * 0x632BE5AB) & _MASK32, device=device))
    cells = _mix32((cell_ids.long() & _MASK32) ^ key)
    counters = torch.arange(n_samples * n_latent * 2, device=device, dtype=torch.int64)
    bits = _mix32(cells.unsqueeze(-1) ^ _mix32(counters + 0x3C6EF372))  # (batch, S * L * 2)
    uniform = (bits.to(torch.float64) + 0.5) / 2.0**32
    uniform = uniform.view(-1, n_samples, n_latent, 2).permute(1, 0, 2, 3)
    radius = torch.sqrt(-2.0 * torch.log(uniform[..., 0]))
    return (radius * torch.cos(2.0 * math.pi * uniform[..., 1])).to(torch.float32)


# ------------------------------------------------------------------------------------ ELBO
class Repeats:
    """``batch`` with every cell repeated ``k`` times, built once per ``k``."""

    def __init__(self, batch: Minibatch) -> None:
        self.batch = batch
        self._cache: dict[int, Minibatch] = {}

    def __call__(self, k: int) -> Minibatch:
        if k not in self._cache:
            self._cache[k] = repeat_minibatch(self.batch, k)
        return self._cache[k]


def noise_elbo(module: VAE, repeats: Repeats, posterior: Posterior, noise: torch.Tensor) -> torch.Tensor:
    """Per-cell ELBO with the given draws: ``mean_s log p(x | mean + std * noise_s) - KL``.

    ``noise`` is ``(n_samples, batch, n_latent)``; samples are decoded in chunks of at most
    ``MAX_DECODED_ROWS`` rows. Returns ``(batch,)``, differentiable in the posterior.
    """
    n_samples, n_cells, n_latent = noise.shape
    chunk = max(1, min(n_samples, MAX_DECODED_ROWS // n_cells))
    total = torch.zeros(n_cells, device=noise.device, dtype=posterior.mean.dtype)
    for start in range(0, n_samples, chunk):
        part = noise[start : start + chunk]
        z = (posterior.mean + posterior.std * part).reshape(-1, n_latent)
        log_lik = module.reconstruction(z, repeats(part.shape[0]))
        total = total + torch.stack(list(log_lik.values())).sum(0).view(-1, n_cells).sum(0)
    return total / n_samples - gaussian_kl(posterior)


@contextmanager
def frozen(module: VAE) -> Iterator[VAE]:
    """Eval mode and ``requires_grad=False`` on every parameter; both are restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        with frozen_weights(module):
            yield module
    finally:
        module.train(was_training)


def cell_chunks(
    data: EncodedCells, index: np.ndarray, batch_size: int
) -> Iterator[tuple[slice, Minibatch, torch.Tensor]]:
    """Minibatches over ``index``: their rows within ``index``, the cells, and the cells' noise ids
    ``(batch,)``: the stable keys of their names when ``data`` has them (so a cell's draws do not
    depend on the cells' order or company), else their positions in ``data``."""
    positions = torch.as_tensor(np.asarray(index, dtype=np.int64), device=data.device)
    ids = positions if data.cell_keys is None else data.cell_keys.to(data.device)[positions]
    starts = range(0, len(index), batch_size)
    for start, batch in zip(starts, data.iterate(positions, batch_size), strict=True):
        rows = slice(start, start + batch.size)
        yield rows, batch, ids[rows]


def elbo_with_fixed_noise(
    module: VAE,
    data: EncodedCells,
    index: np.ndarray,
    posteriors: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    n_samples: int = 32,
    seed: int = 0,
    stream: int = EVALUATION_STREAM,
    batch_size: int = 512,
) -> np.ndarray:
    """Per-cell ELBO (KL weight 1) averaged over the draws of :func:`fixed_normal_noise`.

    The defaults match the ELBOs that :func:`refine_posteriors` records. With
    ``stream=TRAINING_STREAM`` (and its ``n_samples`` and ``seed``) this is the objective that
    ``noise="fixed"`` refinement maximises.

    Parameters
    ----------
    module
        A trained VAE (left as found).
    data, index
        The cells (on the module's device) and their positions, ``(n_cells,)``.
    posteriors
        ``(mean, log_variance)`` arrays ``(n_cells, n_latent)``; default the encoders'.
    n_samples, seed, stream
        The draws.
    batch_size
        Cells per chunk.

    Returns
    -------
    Array of shape ``(n_cells,)``.
    """
    out = []
    with frozen(module), torch.no_grad():
        for rows, batch, ids in cell_chunks(data, index, batch_size):
            if posteriors is None:
                posterior = module.posterior(batch)
            else:
                posterior = posterior_rows(posteriors, rows, len(index), data.device)
            noise = fixed_normal_noise(ids, n_samples, module.config.n_latent, seed, stream)
            out.append(noise_elbo(module, Repeats(batch), posterior, noise).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
