"""Per-cell refinement of the encoder's posterior (semi-amortized inference).

The encoder maps every cell to its q(z|x) in one pass: fast, but not the best Gaussian for each
cell. The difference between the best Gaussian's ELBO and the encoder's is the *amortization gap*.
Refinement starts from the encoder's ``(mean, log_variance)`` and takes Adam steps on each cell's
own ELBO (KL weight 1) with the encoders and decoders frozen: their weights never change and no
gradient is computed for them. All cells of a minibatch are refined at once; memory is bounded by
``batch_size * n_samples`` decoded rows.

Monte Carlo noise is controlled by a counter-based generator (:func:`fixed_normal_noise`): a draw
depends only on ``(seed, stream, the cell's id, sample, latent dimension)``, where the id is a stable
hash of the cell's name (:func:`scamort.data.cell_data.cell_keys`). A cell is refined the same way
alone or in any minibatch, in any order or subset of an AnnData, on any device, in any run. The loss is the
*sum* of per-cell ELBOs and Adam is elementwise, so every cell follows its own Adam trajectory.

Two noise schemes (measured on the worm data, see ``benchmarks/refinement_worm.py``):

``"per_step"`` (default)
    Fresh draws at every step (stream ``2 + step``): stochastic gradient ascent on the expected
    ELBO, with a per-step learning-rate decay. The last iterate is returned.
``"fixed"``
    The same ``n_samples`` draws at every step (a deterministic objective) and each cell's best
    iterate under it, so that objective never decreases. With few samples the optimiser fits the
    draws rather than the expectation: the ELBO measured with independent draws falls after a few
    steps, which is why this is not the default.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch

from scamort._checks import is_real_number, is_whole_number
from scamort.data.cell_data import CellData, Minibatch
from scamort.inference import MAX_DECODED_ROWS, posterior_rows, repeat_minibatch
from scamort.module import VAE, Posterior, gaussian_kl
from scamort.train.freeze import frozen as frozen_weights

__all__ = [
    "DEFAULT_LR",
    "DEFAULT_LR_DECAY",
    "DEFAULT_N_SAMPLES",
    "EVALUATION_STREAM",
    "NOISE_SCHEMES",
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

#: Adam learning rate on means and log-variances at the first step.
DEFAULT_LR = 0.1
#: The learning rate is multiplied by this after every step (0.1 -> 0.036 at step 20).
DEFAULT_LR_DECAY = 0.95
#: Reparameterisation samples per cell and step.
DEFAULT_N_SAMPLES = 4
#: Noise stream of the ``"fixed"`` objective (``"per_step"`` uses stream ``2 + step``).
TRAINING_STREAM = 0
#: Noise stream of the recorded (evaluation) ELBOs, independent of the optimised draws.
EVALUATION_STREAM = 1
#: Accepted values of :attr:`RefineOptions.noise`.
NOISE_SCHEMES = ("per_step", "fixed")

_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class RefineOptions:
    """How to refine posteriors.

    Attributes
    ----------
    n_steps
        Adam steps per cell (0 returns the encoders' posterior).
    lr
        Adam learning rate at the first step, shared by means and log-variances.
    lr_decay
        Factor applied to the learning rate after each step (1: constant). It depends only on the
        step, so the posterior after ``k`` steps is the same for any ``n_steps >= k``.
    n_samples
        Reparameterisation samples per cell and step.
    noise
        ``"per_step"`` (fresh draws every step, last iterate) or ``"fixed"`` (the same draws every
        step, best iterate); see the module docstring.
    batch_size
        Cells refined together; memory grows with ``batch_size * n_samples``.
    seed
        Seed of all the noise.
    record_elbo_at
        Steps after which to evaluate each cell's ELBO (0: the encoders' posterior); each must be
        ``<= n_steps``. The posterior recorded at step ``k`` is the one ``n_steps=k`` returns.
    n_eval_samples
        Samples (stream :data:`EVALUATION_STREAM`, the same at every recorded step) for the
        recorded ELBOs.
    """

    n_steps: int = 20
    lr: float = DEFAULT_LR
    lr_decay: float = DEFAULT_LR_DECAY
    n_samples: int = DEFAULT_N_SAMPLES
    noise: str = "per_step"
    batch_size: int = 512
    seed: int = 0
    record_elbo_at: tuple[int, ...] = ()
    n_eval_samples: int = 32

    def __post_init__(self) -> None:
        for name, minimum in (("n_steps", 0), ("n_samples", 1), ("batch_size", 1)):
            _check_int(getattr(self, name), name, minimum)
        _check_int(self.n_eval_samples, "n_eval_samples", 1)
        _check_int(self.seed, "seed", 0)
        if not (is_real_number(self.lr, finite=True) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}.")
        if not (is_real_number(self.lr_decay) and 0 < self.lr_decay <= 1):
            raise ValueError(f"lr_decay must lie in (0, 1], got {self.lr_decay!r}.")
        if self.noise not in NOISE_SCHEMES:
            raise ValueError(f"noise must be one of {NOISE_SCHEMES}, got {self.noise!r}.")
        bad = [k for k in self.record_elbo_at if not 0 <= k <= self.n_steps]
        if bad:
            raise ValueError(f"record_elbo_at has steps outside [0, n_steps={self.n_steps}]: {bad}.")


def _check_int(value: object, name: str, minimum: int) -> None:
    if not is_whole_number(value, minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


@dataclass(frozen=True)
class RefinementResult:
    """Refined posteriors of the requested cells, in the order of ``index``.

    Attributes
    ----------
    mean, log_variance
        The refined q(z|x), each ``(n_cells, n_latent)`` float32.
    recorded_steps
        The steps of ``elbo``'s columns (sorted, unique; empty when nothing was recorded).
    elbo
        ELBO per cell after each recorded step, ``(n_cells, n_recorded)``, with
        ``n_eval_samples`` draws independent of the optimised ones; ``None`` when nothing was
        recorded.
    seconds
        Wall-clock time of the refinement (recording included).
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


# ------------------------------------------------------------------------------------ noise
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
class _Repeats:
    """``batch`` with every cell repeated ``k`` times, built once per ``k``."""

    def __init__(self, batch: Minibatch) -> None:
        self.batch = batch
        self._cache: dict[int, Minibatch] = {}

    def __call__(self, k: int) -> Minibatch:
        if k not in self._cache:
            self._cache[k] = repeat_minibatch(self.batch, k)
        return self._cache[k]


def _noise_elbo(module: VAE, repeats: _Repeats, posterior: Posterior, noise: torch.Tensor) -> torch.Tensor:
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


def _chunks(
    data: CellData, index: np.ndarray, batch_size: int
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
    data: CellData,
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
        for rows, batch, ids in _chunks(data, index, batch_size):
            if posteriors is None:
                posterior = module.posterior(batch)
            else:
                posterior = posterior_rows(posteriors, rows, len(index), data.device)
            noise = fixed_normal_noise(ids, n_samples, module.config.n_latent, seed, stream)
            out.append(_noise_elbo(module, _Repeats(batch), posterior, noise).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


# ------------------------------------------------------------------------------------ refine
@dataclass
class _Iterate:
    """Variational parameters of one minibatch, each ``(batch, n_latent)``, and the kept one."""

    mean: torch.Tensor
    log_variance: torch.Tensor
    kept_mean: torch.Tensor
    kept_log_variance: torch.Tensor
    kept_objective: torch.Tensor  # (batch,)

    @classmethod
    def start(cls, initial: Posterior) -> _Iterate:
        mean, log_variance = initial.mean.detach(), initial.log_variance.detach()
        return cls(
            mean=mean.clone().requires_grad_(True),
            log_variance=log_variance.clone().requires_grad_(True),
            kept_mean=mean.clone(),
            kept_log_variance=log_variance.clone(),
            kept_objective=torch.full_like(mean[:, 0], -math.inf),
        )

    def current(self) -> Posterior:
        return Posterior(self.mean, self.log_variance)

    def kept(self) -> Posterior:
        return Posterior(self.kept_mean, self.kept_log_variance)

    def keep(self, objective: torch.Tensor | None, best_only: bool) -> None:
        """Keep every cell's current iterate, or with ``best_only`` only where ``objective``
        (``(batch,)``) beats the kept one's."""
        if not best_only or objective is None:
            self.kept_mean = self.mean.detach().clone()
            self.kept_log_variance = self.log_variance.detach().clone()
            return
        objective = objective.detach()
        better = objective > self.kept_objective
        self.kept_mean = torch.where(better[:, None], self.mean.detach(), self.kept_mean)
        self.kept_log_variance = torch.where(
            better[:, None], self.log_variance.detach(), self.kept_log_variance
        )
        self.kept_objective = torch.where(better, objective, self.kept_objective)


def _refine_batch(
    module: VAE, batch: Minibatch, ids: torch.Tensor, options: RefineOptions
) -> tuple[Posterior, torch.Tensor | None]:
    """Refine one minibatch: the posterior and the recorded ELBOs ``(batch, n_recorded)``."""
    n_latent = module.config.n_latent
    repeats = _Repeats(batch)
    with torch.no_grad():
        iterate = _Iterate.start(module.posterior(batch))
    record = sorted(set(options.record_elbo_at))
    eval_noise = (
        fixed_normal_noise(ids, options.n_eval_samples, n_latent, options.seed, EVALUATION_STREAM)
        if record
        else None
    )
    optimizer = torch.optim.Adam([iterate.mean, iterate.log_variance], lr=options.lr)
    decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, options.lr_decay)
    fixed = options.noise == "fixed"
    noise = fixed_normal_noise(ids, options.n_samples, n_latent, options.seed, TRAINING_STREAM)
    recorded = []
    for step in range(options.n_steps + 1):
        last = step == options.n_steps
        if not fixed:
            stream = 2 + step
            noise = fixed_normal_noise(ids, options.n_samples, n_latent, options.seed, stream)
        objective = None
        if fixed or not last:  # "per_step" keeps the last iterate without evaluating it
            with torch.set_grad_enabled(not last):
                objective = _noise_elbo(module, repeats, iterate.current(), noise)
        iterate.keep(objective, best_only=fixed)
        if step in record:
            with torch.no_grad():
                recorded.append(_noise_elbo(module, repeats, iterate.kept(), eval_noise))
        if last:
            break
        optimizer.zero_grad(set_to_none=True)
        (-objective.sum()).backward()
        optimizer.step()
        decay.step()
    return iterate.kept(), (torch.stack(recorded, -1) if recorded else None)


def refine_posteriors(
    module: VAE,
    data: CellData,
    index: np.ndarray,
    *,
    n_steps: int = 20,
    lr: float = DEFAULT_LR,
    lr_decay: float = DEFAULT_LR_DECAY,
    n_samples: int = DEFAULT_N_SAMPLES,
    noise: str = "per_step",
    batch_size: int = 512,
    seed: int = 0,
    record_elbo_at: Sequence[int] = (),
    n_eval_samples: int = 32,
) -> RefinementResult:
    """Refine each cell's q(z|x) by Adam steps on its own ELBO, starting from the encoders'.

    Parameters
    ----------
    module
        A trained VAE. Its weights, their ``requires_grad`` flags and ``.grad`` and its train/eval
        mode are left as found; it runs in eval mode (no dropout).
    data
        The cells, on the module's device.
    index
        Positions of the cells to refine, ``(n_cells,)``; they also key the noise.
    n_steps, lr, lr_decay, n_samples, noise, batch_size, seed, record_elbo_at, n_eval_samples
        See :class:`RefineOptions`.

    Returns
    -------
    RefinementResult
        ``mean`` and ``log_variance`` ``(n_cells, n_latent)`` in the order of ``index`` (pass
        ``.posteriors`` as ``posteriors=`` to :mod:`scamort.inference`) and the recorded ELBOs.

    Raises
    ------
    ValueError
        If an option is invalid.
    """
    options = RefineOptions(
        n_steps=n_steps,
        lr=lr,
        lr_decay=lr_decay,
        n_samples=n_samples,
        noise=noise,
        batch_size=batch_size,
        seed=seed,
        record_elbo_at=tuple(int(k) for k in record_elbo_at),
        n_eval_samples=n_eval_samples,
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
    steps = tuple(sorted(set(options.record_elbo_at)))
    empty = np.zeros((0, module.config.n_latent), dtype=np.float32)
    elbo = None
    if steps:
        elbo = np.concatenate(elbos) if elbos else np.zeros((0, len(steps)), dtype=np.float32)
    return RefinementResult(
        mean=np.concatenate(means) if means else empty,
        log_variance=np.concatenate(log_variances) if log_variances else empty,
        recorded_steps=steps,
        elbo=elbo,
        seconds=time.perf_counter() - started,
    )


def maybe_refine(
    module: VAE,
    data: CellData,
    index: np.ndarray,
    refine_steps: int,
    options: RefineOptions | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``posteriors=`` argument of :mod:`scamort.inference` for a ``refine_steps`` keyword.

    Returns ``None`` (use the encoders') when ``refine_steps == 0``, else ``(mean, log_variance)``
    refined for ``refine_steps`` steps with ``options`` (default :class:`RefineOptions`; its
    ``n_steps`` is replaced and nothing is recorded).

    Raises
    ------
    ValueError
        If ``refine_steps`` is not an integer ``>= 0``.
    """
    _check_int(refine_steps, "refine_steps", 0)
    if refine_steps == 0:
        return None
    options = replace(options or RefineOptions(), n_steps=int(refine_steps), record_elbo_at=())
    return refine_with_options(module, data, index, options).posteriors
