"""Posterior queries on a trained VAE, chunked over cells so memory stays bounded.

Each function takes the module, the cells as :class:`CellData` (already on the module's device) and the
positions to use, and returns numpy arrays. ``posteriors`` optionally replaces the encoders' q(z|x) for
those cells (e.g. refined posteriors), given as ``(mean, log_variance)`` arrays ``(n_cells, n_latent)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from scamort.data.backed import EncodedCells
from scamort.data.cell_data import Minibatch, ModalityBatch
from scamort.errors import InputError
from scamort.module import VAE, Posterior, gaussian_kl, standard_normal_log_prob

__all__ = [
    "elbo_terms",
    "latent",
    "library_size",
    "marginal_log_likelihood",
    "normalized_expression",
    "posterior_predictive",
    "posterior_rows",
    "repeat_minibatch",
]

#: Upper bound on decoded (cells × samples) rows held at once: keeps dense (rows, features) buffers small.
MAX_DECODED_ROWS = 16_384

PosteriorArrays = tuple[np.ndarray, np.ndarray]


def posterior_rows(
    posteriors: PosteriorArrays, rows: slice | np.ndarray, n_cells: int, device: torch.device
) -> Posterior:
    """Rows ``rows`` of given ``(mean, log_variance)`` arrays, each ``(n_cells, n_latent)``, as a
    float32 :class:`Posterior` on ``device`` (float64 numpy arithmetic would not meet float32 weights).

    Parameters
    ----------
    posteriors
        ``(mean, log_variance)``, each ``(n_cells, n_latent)``, any float dtype.
    rows
        The rows to take.
    n_cells
        Cells the arrays must cover (one row each).
    device
        Where the tensors go.

    Returns
    -------
    Posterior
        ``mean`` and ``log_variance`` of shape ``(len(rows), n_latent)``, float32.

    Raises
    ------
    InputError
        If the arrays do not have one row per cell (``n_cells``) and the same shape.
    """
    mean, log_variance = posteriors
    if np.shape(mean) != np.shape(log_variance) or len(mean) != n_cells:
        raise InputError(
            f"posteriors must be two arrays of shape (n_cells, n_latent), one row per cell ({n_cells}); "
            f"got {np.shape(mean)} and {np.shape(log_variance)}."
        )
    return Posterior(
        torch.as_tensor(mean[rows], dtype=torch.float32, device=device),
        torch.as_tensor(log_variance[rows], dtype=torch.float32, device=device),
    )


def _batches(
    module: VAE,
    data: EncodedCells,
    index: np.ndarray,
    batch_size: int,
    posteriors: PosteriorArrays | None,
    modalities: tuple[str, ...] | None = None,
) -> Iterator[tuple[Minibatch, Posterior]]:
    """Minibatches over ``index`` with their posterior (encoders', or the given arrays)."""
    device = data.device
    for start in range(0, len(index), batch_size):
        chunk = torch.as_tensor(index[start : start + batch_size], device=device)
        batch = data.minibatch(chunk)
        if posteriors is None:
            posterior = module.posterior(batch, modalities)
        else:
            posterior = posterior_rows(posteriors, slice(start, start + batch_size), len(index), device)
        yield batch, posterior


@torch.no_grad()
def latent(
    module: VAE,
    data: EncodedCells,
    index: np.ndarray,
    *,
    give_mean: bool = True,
    modalities: tuple[str, ...] | None = None,
    batch_size: int = 4096,
    posteriors: PosteriorArrays | None = None,
    with_log_variance: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean (or one sample) and log-variance per cell, each ``(n_cells, n_latent)``.

    Both are written into arrays allocated once (no list of batches joined at the end, which would
    hold every row twice); without ``with_log_variance`` the second is an empty ``(n_cells, 0)``.
    """
    module.eval()
    means: np.ndarray | None = None
    log_variances: np.ndarray | None = None
    for start, (_, posterior) in zip(
        range(0, len(index), batch_size),
        _batches(module, data, index, batch_size, posteriors, modalities),
        strict=True,
    ):
        mean = (posterior.mean if give_mean else posterior.rsample()).cpu().numpy()
        if means is None or log_variances is None:
            means = np.empty((len(index), mean.shape[1]), dtype=mean.dtype)
            log_variances = np.empty(
                (len(index), mean.shape[1] if with_log_variance else 0), dtype=mean.dtype
            )
        means[start : start + len(mean)] = mean
        if with_log_variance:
            log_variances[start : start + len(mean)] = posterior.log_variance.cpu().numpy()
    if means is None or log_variances is None:  # no cell: the shapes the joined batches had
        return np.empty((0, 0), dtype=np.float32), np.empty((0, 0), dtype=np.float32)
    return means, log_variances


@torch.no_grad()
def elbo_terms(
    module: VAE,
    data: EncodedCells,
    index: np.ndarray,
    *,
    n_samples: int = 1,
    batch_size: int = 1024,
    posteriors: PosteriorArrays | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-cell reconstruction log-likelihood per modality and KL, averaged over ``n_samples`` draws.

    Returns
    -------
    reconstruction
        Modality name -> ``E_q log p(x_m | z)`` per cell, ``(n_cells,)``.
    kl
        KL(q || prior) per cell, ``(n_cells,)``.
    """
    module.eval()
    reconstruction: dict[str, list[np.ndarray]] = {name: [] for name in module.modality_names}
    kls = []
    for batch, posterior in _batches(module, data, index, batch_size, posteriors):
        sums = {name: torch.zeros(()) for name in module.modality_names}
        for _ in range(n_samples):
            for name, value in module.reconstruction(posterior.rsample(), batch).items():
                sums[name] = sums[name] + value
        for name in module.modality_names:
            reconstruction[name].append((sums[name] / n_samples).cpu().numpy())
        kls.append(gaussian_kl(posterior).cpu().numpy())
    return {k: np.concatenate(v) for k, v in reconstruction.items()}, np.concatenate(kls)


def repeat_minibatch(batch: Minibatch, n: int) -> Minibatch:
    """The minibatch with every cell repeated ``n`` times (sample-major: all cells, then again)."""
    index = torch.arange(batch.size, device=batch.batch_index.device).repeat(n)
    modalities = {
        name: ModalityBatch(
            counts=modality.counts.repeat(n),
            log_library=modality.log_library[index],
            present=modality.present[index],
            measured=None if modality.measured is None else modality.measured[index],
        )
        for name, modality in batch.modalities.items()
    }
    return Minibatch(
        modalities=modalities,
        batch_index=batch.batch_index[index],
        categorical=batch.categorical[index],
        continuous=batch.continuous[index],
    )


@torch.no_grad()
def marginal_log_likelihood(
    module: VAE,
    data: EncodedCells,
    index: np.ndarray,
    *,
    n_mc_samples: int = 1000,
    batch_size: int = 256,
    posteriors: PosteriorArrays | None = None,
) -> np.ndarray:
    """Importance-sampled ``log p(x)`` per cell with q(z|x) as the proposal, ``(n_cells,)``.

    ``log p(x) ≈ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K``, with the K samples
    processed in chunks of at most ``MAX_DECODED_ROWS`` decoded rows.
    """
    module.eval()
    out = []
    for batch, posterior in _batches(module, data, index, batch_size, posteriors):
        samples_per_chunk = max(1, MAX_DECODED_ROWS // batch.size)
        log_weights = []
        done = 0
        while done < n_mc_samples:
            k = min(samples_per_chunk, n_mc_samples - done)
            repeated = repeat_minibatch(batch, k)
            mean = posterior.mean.repeat(k, 1)
            log_variance = posterior.log_variance.repeat(k, 1)
            z = Posterior(mean, log_variance).rsample()
            log_lik = torch.stack(list(module.reconstruction(z, repeated).values())).sum(0)
            log_weight = log_lik + standard_normal_log_prob(z) - Posterior(mean, log_variance).log_prob(z)
            log_weights.append(log_weight.view(k, batch.size))
            done += k
        stacked = torch.cat(log_weights).double()
        out.append((torch.logsumexp(stacked, 0) - math.log(n_mc_samples)).cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def normalized_expression(
    module: VAE,
    data: EncodedCells,
    index: np.ndarray,
    *,
    modality: str,
    transform_batch: int | None = None,
    n_samples: int = 1,
    batch_size: int = 1024,
    posteriors: PosteriorArrays | None = None,
    include_background: bool = True,
) -> np.ndarray:
    """Expected expression proportions of ``modality`` per cell, averaged over ``n_samples`` z draws
    (the posterior mean when ``n_samples == 1``), shape ``(n_cells, n_features)``.

    ``transform_batch`` decodes every cell as if it came from that batch (code), removing batch effects.
    ``include_background=False`` keeps only the foreground part of an ``"nbmixture"`` modality.
    """
    module.eval()
    decoder = module.decoder(modality)
    out = []
    for batch, posterior in _batches(module, data, index, batch_size, posteriors):
        categorical = batch.categorical
        batch_index = batch.batch_index
        if transform_batch is not None and categorical.shape[1]:
            categorical = categorical.clone()
            categorical[:, 0] = transform_batch
            batch_index = torch.full_like(batch_index, transform_batch)
        total = torch.zeros(())
        for _ in range(n_samples):
            z = posterior.mean if n_samples == 1 else posterior.rsample()
            total = total + decoder.proportions(
                module.decoder_input(z, modality),
                categorical=categorical,
                continuous=batch.continuous,
                batch_index=batch_index,
                include_background=include_background,
            )
        out.append((total / n_samples).cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def library_size(
    module: VAE, data: EncodedCells, index: np.ndarray, *, modality: str, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """The library-size head's prediction of ``log library`` of ``modality`` from each cell's other
    modalities (see :meth:`VAE.library_latent`): mean and variance, each ``(n_cells,)``."""
    module.eval()
    means, variances = [], []
    for start in range(0, len(index), batch_size):
        chunk = torch.as_tensor(index[start : start + batch_size], device=data.device)
        mean, log_variance = module.library(data.minibatch(chunk), modality)
        means.append(mean.cpu().numpy())
        variances.append(log_variance.exp().cpu().numpy())
    return np.concatenate(means), np.concatenate(variances)


@torch.no_grad()
def posterior_predictive(
    module: VAE,
    data: EncodedCells,
    index: np.ndarray,
    *,
    modality: str,
    n_samples: int = 1,
    batch_size: int = 1024,
    log_library: np.ndarray | None = None,
) -> np.ndarray:
    """Counts drawn from p(x | z), z ~ q(z | x), shape ``(n_samples, n_cells, n_features)``, at each
    cell's own library size of ``modality`` or at ``log_library`` ``(n_cells,)`` (e.g. predicted for
    cells that lack the modality)."""
    module.eval()
    out = []
    for start, (batch, posterior) in zip(
        range(0, len(index), batch_size), _batches(module, data, index, batch_size, None), strict=True
    ):
        library = None
        if log_library is not None:
            rows = log_library[start : start + batch_size]
            library = torch.as_tensor(rows, dtype=torch.float32, device=data.device)
        draws = [
            module.decode(posterior.rsample(), batch, modality, library).sample().cpu().numpy()
            for _ in range(n_samples)
        ]
        out.append(np.stack(draws))
    return np.concatenate(out, axis=1)
