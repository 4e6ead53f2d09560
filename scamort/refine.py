"""Per-cell refinement of the encoder's posterior (semi-amortized inference).

The encoder maps every cell to its q(z|x) in one pass, which is fast but not the best q for each
cell: the difference between the best Gaussian's ELBO and the encoder's is the *amortization gap*.
Refinement starts from the encoder's ``(mean, log_variance)`` and takes Adam steps on each cell's own
ELBO (KL weight 1), with the encoders and decoders frozen: their weights are never changed and no
gradient is accumulated into them. All cells of a minibatch are refined at once; memory is bounded
by ``batch_size × n_samples`` decoded rows.

Monte Carlo noise is fixed: each cell gets ``n_samples`` reparameterisation draws that depend only on
``(seed, the cell's position in the data, sample, latent dimension)``, through a counter-based hash.
The objective is therefore a deterministic function of each cell's own parameters, the same whether
a cell is refined alone or in any minibatch, on any device. Because the loss is the *sum* of per-cell
ELBOs and Adam is elementwise, every cell follows its own Adam trajectory. With ``keep_best`` (the
default) each cell returns its best iterate under that objective, so refinement never lowers it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch

from scamort.data.cell_data import CellData, Minibatch
from scamort.inference import MAX_DECODED_ROWS
from scamort.inference import _repeat as repeat_minibatch
from scamort.module import VAE, Posterior, gaussian_kl

__all__ = [
    "DEFAULT_LR",
    "DEFAULT_N_SAMPLES",
    "EVALUATION_STREAM",
    "TRAINING_STREAM",
    "RefineOptions",
    "RefinementResult",
    "elbo_with_fixed_noise",
    "fixed_normal_noise",
    "frozen",
    "maybe_refine",
    "refine_posteriors",
    "refine_with_options",
]

#: Adam learning rate on means and log-variances (measured on the worm data, see the benchmark).
DEFAULT_LR = 0.1
#: Fixed reparameterisation samples per cell in the refinement objective.
DEFAULT_N_SAMPLES = 4
#: Noise stream of the optimised objective.
TRAINING_STREAM = 0
#: Noise stream of the evaluation ELBOs (independent of the optimised samples).
EVALUATION_STREAM = 1

_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class RefineOptions:
    """How to refine posteriors.

    Attributes
    ----------
    n_steps
        Adam steps per cell (0 returns the encoder's posterior).
    lr
        Adam learning rate, shared by means and log-variances.
    n_samples
        Fixed reparameterisation samples per cell in the objective.
    batch_size
        Cells refined together; memory grows with ``batch_size × n_samples``.
    seed
        Seed of the fixed noise (training and evaluation streams).
    keep_best
        Return each cell's best iterate under the optimised objective (never worse than the
        encoder's), instead of the last one.
    record_elbo_at
        Steps after which to evaluate the ELBO of each cell's posterior (0: the encoder's); each
        must be ``<= n_steps``. The posterior recorded at step ``k`` is the one that ``n_steps=k``
        returns.
    n_eval_samples
        Fixed samples (an independent stream) for the recorded ELBOs.
    """

    n_steps: int = 20
    lr: float = DEFAULT_LR
    n_samples: int = DEFAULT_N_SAMPLES
    batch_size: int = 512
    seed: int = 0
    keep_best: bool = True
    record_elbo_at: tuple[int, ...] = ()
    n_eval_samples: int = 32
    resample_noise: bool = False
    final_lr_fraction: float = 1.0

    def __post_init__(self) -> None:
        for name in ("n_steps", "n_samples", "batch_size", "n_eval_samples"):
            value = getattr(self, name)
            minimum = 0 if name == "n_steps" else 1
            if not isinstance(value, int | np.integer) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
        if not (isinstance(self.lr, float | int) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}.")
        bad = [k for k in self.record_elbo_at if not 0 <= int(k) <= self.n_steps]
        if bad:
            raise ValueError(f"record_elbo_at has steps outside [0, n_steps={self.n_steps}]: {bad}")


@dataclass(frozen=True)
class RefinementResult:
    """Refined posteriors of the requested cells, in the order of ``index``.

    Attributes
    ----------
    mean, log_variance
        The refined q(z|x), each ``(n_cells, n_latent)`` float32.
    recorded_steps
        The steps of ``elbo``'s columns (sorted, unique).
    elbo
        ELBO per cell after each recorded step, ``(n_cells, n_recorded)``, computed with
        ``n_eval_samples`` fixed samples independent of the optimised ones; ``None`` when nothing
        was recorded.
    seconds
        Wall-clock time of the whole refinement (recording included).
    """

    mean: np.ndarray
    log_variance: np.ndarray
    recorded_steps: tuple[int, ...]
    elbo: np.ndarray | None
    seconds: float

    @property
    def posteriors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, log_variance)``: pass as ``posteriors=`` to :mod:`scamort.inference`."""
        return self.mean, self.log_variance


# ---------------------------------------------------------------------------------------- noise
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
    cell_ids: torch.Tensor, n_samples: int, n_latent: int, seed: int, stream: int = TRAINING_STREAM
) -> torch.Tensor:
    """Standard normal draws that depend only on each cell's id, the seed and the stream.

    A counter-based generator (hash + Box-Muller): the draws of a cell are the same in any
    minibatch and on any device, and the first ``k`` samples do not depend on ``n_samples``.

    Parameters
    ----------
    cell_ids
        Integer ids of the cells (their positions in the data), shape ``(batch,)``.
    n_samples, n_latent
        Draws per cell and latent dimension.
    seed, stream
        Independent noise for each ``(seed, stream)`` pair.

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


# ---------------------------------------------------------------------------------------- ELBO
def _reconstruction_sum(module: VAE, z: torch.Tensor, batch: Minibatch) -> torch.Tensor:
    """``sum_m log p(x_m | z)`` per row of ``z`` (``(rows, n_latent)``; ``batch`` has the same rows)."""
    return torch.stack(list(module.reconstruction(z, batch).values())).sum(0)


def _fixed_noise_elbo(
    module: VAE, batch: Minibatch, posterior: Posterior, noise: torch.Tensor
) -> torch.Tensor:
    """Per-cell ELBO with the given noise: ``mean_s log p(x | mean + std * noise_s) - KL``.

    ``noise`` is ``(n_samples, batch, n_latent)``; samples are decoded in chunks of at most
    ``MAX_DECODED_ROWS`` rows. Returns ``(batch,)``, differentiable in the posterior.
    """
    n_samples, n_cells, _ = noise.shape
    chunk = max(1, min(n_samples, MAX_DECODED_ROWS // n_cells))
    total = torch.zeros(n_cells, device=noise.device, dtype=posterior.mean.dtype)
    for start in range(0, n_samples, chunk):
        part = noise[start : start + chunk]
        z = (posterior.mean + posterior.std * part).reshape(-1, posterior.mean.shape[-1])
        log_lik = _reconstruction_sum(module, z, repeat_minibatch(batch, part.shape[0]))
        total = total + log_lik.view(part.shape[0], n_cells).sum(0)
    return total / n_samples - gaussian_kl(posterior)


@contextmanager
def frozen(module: VAE) -> Iterator[VAE]:
    """Evaluation mode and ``requires_grad=False`` on every parameter, both restored afterwards."""
    was_training = module.training
    requires_grad = [p.requires_grad for p in module.parameters()]
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    try:
        yield module
    finally:
        for parameter, flag in zip(module.parameters(), requires_grad, strict=True):
            parameter.requires_grad_(flag)
        module.train(was_training)


def _chunks(
    data: CellData, index: np.ndarray, batch_size: int
) -> Iterator[tuple[slice, Minibatch, torch.Tensor]]:
    """Minibatches over ``index``: their rows within ``index``, the cells, and the cells' ids
    (positions in ``data``, ``(batch,)``)."""
    ids = torch.as_tensor(np.asarray(index, dtype=np.int64), device=data.device)
    starts = range(0, len(index), batch_size)
    for start, batch in zip(starts, data.iterate(ids, batch_size), strict=True):
        rows = slice(start, start + batch.size)
        yield rows, batch, ids[rows]


def elbo_with_fixed_noise(
    module: VAE,
    data: CellData,
    index: np.ndarray,
    posteriors: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    n_samples: int = DEFAULT_N_SAMPLES,
    seed: int = 0,
    stream: int = TRAINING_STREAM,
    batch_size: int = 512,
) -> np.ndarray:
    """Per-cell ELBO (KL weight 1) with the fixed noise of :func:`fixed_normal_noise`.

    With ``stream=TRAINING_STREAM`` and the same ``n_samples`` and ``seed`` this is exactly the
    objective :func:`refine_posteriors` maximises.

    Parameters
    ----------
    module
        A trained VAE.
    data, index
        The cells (on the module's device) and their positions, ``(n_cells,)``.
    posteriors
        ``(mean, log_variance)`` arrays ``(n_cells, n_latent)``; default the encoders'.
    n_samples, seed, stream, batch_size
        Noise and chunking.

    Returns
    -------
    Array of shape ``(n_cells,)``.
    """
    out = []
    with frozen(module), torch.no_grad():
        for rows, batch, ids in _chunks(data, index, batch_size):
            posterior = module.posterior(batch)
            if posteriors is not None:
                posterior = Posterior(
                    torch.as_tensor(posteriors[0][rows], device=data.device),
                    torch.as_tensor(posteriors[1][rows], device=data.device),
                )
            noise = fixed_normal_noise(ids, n_samples, module.config.n_latent, seed, stream)
            out.append(_fixed_noise_elbo(module, batch, posterior, noise).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


# ---------------------------------------------------------------------------------------- refine
@dataclass
class _BatchState:
    """The variational parameters of one minibatch during refinement (each ``(batch, n_latent)``)."""

    mean: torch.Tensor
    log_variance: torch.Tensor
    best_mean: torch.Tensor
    best_log_variance: torch.Tensor
    best_objective: torch.Tensor  # (batch,)

    def keep_improved(self, objective: torch.Tensor, keep_best: bool) -> None:
        """Remember the current iterate where it beats the best so far (or always, without
        ``keep_best``)."""
        objective = objective.detach()
        better = objective > self.best_objective if keep_best else torch.ones_like(objective, dtype=bool)
        column = better.unsqueeze(-1)
        self.best_mean = torch.where(column, self.mean.detach(), self.best_mean)
        self.best_log_variance = torch.where(column, self.log_variance.detach(), self.best_log_variance)
        self.best_objective = torch.where(better, objective, self.best_objective)

    def best(self) -> Posterior:
        return Posterior(self.best_mean, self.best_log_variance)


def _start(module: VAE, batch: Minibatch) -> _BatchState:
    with torch.no_grad():
        initial = module.posterior(batch)
    mean = initial.mean.detach().clone().requires_grad_(True)
    log_variance = initial.log_variance.detach().clone().requires_grad_(True)
    return _BatchState(
        mean=mean,
        log_variance=log_variance,
        best_mean=initial.mean.detach().clone(),
        best_log_variance=initial.log_variance.detach().clone(),
        best_objective=torch.full_like(initial.mean[:, 0], -math.inf),
    )


def _refine_batch(
    module: VAE, batch: Minibatch, ids: torch.Tensor, options: RefineOptions
) -> tuple[Posterior, torch.Tensor | None]:
    """Refine one minibatch; returns the posterior and the recorded ELBOs ``(batch, n_recorded)``."""
    n_latent = module.config.n_latent
    state = _start(module, batch)
    noise = fixed_normal_noise(ids, options.n_samples, n_latent, options.seed, TRAINING_STREAM)
    record = sorted(set(options.record_elbo_at))
    eval_noise = (
        fixed_normal_noise(ids, options.n_eval_samples, n_latent, options.seed, EVALUATION_STREAM)
        if record
        else None
    )
    optimizer = torch.optim.Adam([state.mean, state.log_variance], lr=options.lr)
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, options.n_steps, eta_min=options.lr * options.final_lr_fraction
        )
        if options.final_lr_fraction < 1
        else None
    )
    recorded = []
    for step in range(options.n_steps + 1):
        if options.resample_noise:
            noise = fixed_normal_noise(ids, options.n_samples, n_latent, options.seed, 2 + step)
        with torch.set_grad_enabled(step < options.n_steps):
            objective = _fixed_noise_elbo(module, batch, Posterior(state.mean, state.log_variance), noise)
        state.keep_improved(objective, options.keep_best)
        if step in record:
            with torch.no_grad():
                recorded.append(_fixed_noise_elbo(module, batch, state.best(), eval_noise))
        if step == options.n_steps:
            break
        optimizer.zero_grad(set_to_none=True)
        (-objective.sum()).backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return state.best(), (torch.stack(recorded, -1) if recorded else None)


def refine_posteriors(
    module: VAE,
    data: CellData,
    index: np.ndarray,
    *,
    n_steps: int = 20,
    lr: float = DEFAULT_LR,
    n_samples: int = DEFAULT_N_SAMPLES,
    batch_size: int = 512,
    seed: int = 0,
    keep_best: bool = True,
    record_elbo_at: Sequence[int] = (),
    n_eval_samples: int = 32,
    resample_noise: bool = False,
    final_lr_fraction: float = 1.0,
) -> RefinementResult:
    """Refine the encoder's q(z|x) of each cell by Adam steps on its own ELBO (decoders frozen).

    Parameters
    ----------
    module
        A trained VAE; its weights, ``requires_grad`` flags and train/eval mode are left as found
        (it runs in eval mode: no dropout).
    data
        The cells, on the module's device.
    index
        Positions of the cells to refine, ``(n_cells,)``.
    n_steps, lr, n_samples, batch_size, seed, keep_best, record_elbo_at, n_eval_samples
        See :class:`RefineOptions`.

    Returns
    -------
    RefinementResult
        ``mean`` and ``log_variance`` ``(n_cells, n_latent)`` in the order of ``index`` (use
        ``.posteriors`` as ``posteriors=`` in :mod:`scamort.inference`), and the recorded ELBOs.
    """
    options = RefineOptions(
        n_steps=n_steps,
        lr=lr,
        n_samples=n_samples,
        batch_size=batch_size,
        seed=seed,
        keep_best=keep_best,
        record_elbo_at=tuple(int(k) for k in record_elbo_at),
        n_eval_samples=n_eval_samples,
        resample_noise=resample_noise,
        final_lr_fraction=final_lr_fraction,
    )
    return refine_with_options(module, data, index, options)


def refine_with_options(
    module: VAE, data: CellData, index: np.ndarray, options: RefineOptions
) -> RefinementResult:
    """:func:`refine_posteriors` with its options as one :class:`RefineOptions`."""
    started = time.perf_counter()
    means, log_variances, elbos = [], [], []
    with frozen(module):
        for _, batch, ids in _chunks(data, index, options.batch_size):
            posterior, recorded = _refine_batch(module, batch, ids, options)
            means.append(posterior.mean.cpu().numpy())
            log_variances.append(posterior.log_variance.cpu().numpy())
            if recorded is not None:
                elbos.append(recorded.cpu().numpy())
    n_latent = module.config.n_latent
    empty = np.zeros((0, n_latent), dtype=np.float32)
    recorded_steps = tuple(sorted(set(options.record_elbo_at)))
    return RefinementResult(
        mean=np.concatenate(means) if means else empty,
        log_variance=np.concatenate(log_variances) if log_variances else empty,
        recorded_steps=recorded_steps,
        elbo=(
            np.concatenate(elbos)
            if elbos
            else (np.zeros((0, len(recorded_steps)), np.float32) if recorded_steps else None)
        ),
        seconds=time.perf_counter() - started,
    )


def maybe_refine(
    module: VAE,
    data: CellData,
    index: np.ndarray,
    refine_steps: int,
    options: RefineOptions | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """``posteriors=`` for :mod:`scamort.inference`: ``None`` (the encoders') when
    ``refine_steps == 0``, else the posteriors refined for ``refine_steps`` steps.

    ``options`` sets everything else (default :class:`RefineOptions`); its ``n_steps`` is replaced
    and nothing is recorded.

    Raises
    ------
    ValueError
        If ``refine_steps`` is not an integer ``>= 0``.
    """
    if not isinstance(refine_steps, int | np.integer) or refine_steps < 0:
        raise ValueError(f"refine_steps must be an integer >= 0, got {refine_steps!r}.")
    if refine_steps == 0:
        return None
    options = replace(options or RefineOptions(), n_steps=int(refine_steps), record_elbo_at=())
    return refine_with_options(module, data, index, options).posteriors
