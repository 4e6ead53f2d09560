"""The AdamW optimiser of :func:`scamort.train.fit`: the count decoders' output layers get their own ``eps``.

Adam divides each step by the root of the gradient's second moment plus ``eps``. The output layer of
a count decoder (``nb``, ``zinb``, ``poisson``: RNA-type counts read as proportions of the library)
holds one row per feature; the rows of rarely expressed features get small, noisy gradients, which
plain Adam (``eps`` 1e-8) scales up to full-size steps, so the decoder fits the training cells'
noise. A large ``eps`` on those output layers only (``TrainConfig.decoder_adam_eps``) turns their
steps into small SGD steps. Everything else keeps ``TrainConfig.adam_eps``: the decoders' hidden
layers and covariate embeddings, the dispersions, the protein decoders (``nbmixture``: a few
well-measured features, whose background and foreground a damped head learns too slowly), the
encoders, library heads and classifiers. ``benchmarks/quality.py`` and ``benchmarks/panels.py``
measure the choice.
"""

from __future__ import annotations

from typing import Any

import torch

from scamort.train.config import TrainConfig

__all__ = ["DAMPED_LIKELIHOODS", "build_optimizer", "damped_parameters", "parameter_groups"]

#: Likelihoods whose decoders' output layers (``decoder.head``) get ``TrainConfig.decoder_adam_eps``.
DAMPED_LIKELIHOODS = ("nb", "zinb", "poisson")


def damped_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The output-layer parameters of ``module``'s count decoders (``DAMPED_LIKELIHOODS``).

    Parameters
    ----------
    module
        The model; its ``decoders`` (a ``torch.nn.ModuleDict`` of modality name to decoder, when it
        has one) are searched for decoders whose ``likelihood`` is in ``DAMPED_LIKELIHOODS``.

    Returns
    -------
    list of torch.nn.Parameter
        Each such decoder's ``head`` weight ``(n_features, n_hidden)`` and bias ``(n_features,)``.
    """
    decoders = getattr(module, "decoders", None)
    if not isinstance(decoders, torch.nn.ModuleDict):
        return []
    heads = [
        decoder.head
        for decoder in decoders.values()
        if getattr(decoder, "likelihood", None) in DAMPED_LIKELIHOODS
    ]
    return [
        parameter for head in heads if isinstance(head, torch.nn.Module) for parameter in head.parameters()
    ]


def parameter_groups(module: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``module``, each with its ``eps``.

    Parameters
    ----------
    module
        The model; only its parameters that require a gradient are optimised.
    config
        ``decoder_adam_eps`` for :func:`damped_parameters`, ``adam_eps`` for every other parameter.

    Returns
    -------
    list of dict
        ``{"name", "params", "eps"}`` per non-empty group: ``"decoder_heads"`` then ``"other"``.
    """
    ids = {id(p) for p in damped_parameters(module)}
    params = [p for p in module.parameters() if p.requires_grad]  # frozen ones are not optimised
    groups = [
        {
            "name": "decoder_heads",
            "params": [p for p in params if id(p) in ids],
            "eps": config.decoder_adam_eps,
        },
        {"name": "other", "params": [p for p in params if id(p) not in ids], "eps": config.adam_eps},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(module: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` with ``config``'s learning rate and weight decay."""
    return torch.optim.AdamW(
        parameter_groups(module, config),
        lr=config.lr,
        weight_decay=config.weight_decay,
        eps=config.adam_eps,
        fused=True,
    )
