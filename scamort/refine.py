"""Per-cell refinement of the encoder's posterior (semi-amortized inference).

The encoder maps every cell to its q(z|x) in one pass: fast, but not the best Gaussian for each
cell. The difference between the best Gaussian's ELBO and the encoder's is the *amortization gap*.
Refinement starts from the encoder's ``(mean, log_variance)`` and takes Adam steps on each cell's
own ELBO (KL weight 1) with the encoders and decoders frozen: their weights never change and no
gradient is computed for them. All cells of a minibatch are refined at once; memory is bounded by
``batch_size * n_samples`` decoded rows.

Monte Carlo noise is controlled by a counter-based generator (:func:`fixed_normal_noise`, in
:mod:`scamort.fixed_noise` with the ELBO under given draws, re-exported here): a draw depends only on
``(seed, stream, the cell's id, sample, latent dimension)``, where the id is a stable hash of the
cell's name (:func:`scamort.data.cell_data.cell_keys`). A cell is refined the same way alone or in any
minibatch, in any order or subset of an AnnData, on any device, in any run. The loss is the
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
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from scamort._checks import is_real_number, is_whole_number
from scamort.data.backed import EncodedCells
from scamort.data.cell_data import Minibatch
from scamort.fixed_noise import (
    EVALUATION_STREAM,
    TRAINING_STREAM,
    Repeats,
    cell_chunks,
    elbo_with_fixed_noise,
    fixed_normal_noise,
    frozen,
    noise_elbo,
)
from scamort.module import VAE, Posterior

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
#: Accepted values of :attr:`RefineOptions.noise`.
NOISE_SCHEMES = ("per_step", "fixed")


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
    repeats = Repeats(batch)
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
                objective = noise_elbo(module, repeats, iterate.current(), noise)
        iterate.keep(objective, best_only=fixed)
        if step in record:
            with torch.no_grad():
                assert eval_noise is not None  # drawn whenever a step is recorded
                recorded.append(noise_elbo(module, repeats, iterate.kept(), eval_noise))
        if last:
            break
        assert objective is not None  # evaluated at every step but a "per_step" run's last
        optimizer.zero_grad(set_to_none=True)
        (-objective.sum()).backward()
        optimizer.step()
        decay.step()
    return iterate.kept(), (torch.stack(recorded, -1) if recorded else None)


def refine_posteriors(
    module: VAE,
    data: EncodedCells,
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
    module: VAE, data: EncodedCells, index: np.ndarray, options: RefineOptions
) -> RefinementResult:
    """:func:`refine_posteriors` with its options as one :class:`RefineOptions`."""
    started = time.perf_counter()
    means, log_variances, elbos = [], [], []
    with frozen(module):
        for _, batch, ids in cell_chunks(data, index, options.batch_size):
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
    data: EncodedCells,
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
