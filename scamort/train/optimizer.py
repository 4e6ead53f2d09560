"""The AdamW optimiser of :func:`scamort.train.fit`: the decoders can get their own ``eps``.

Adam divides each step by the root of the gradient's second moment plus ``eps``. A decoder's output
weights for a rarely expressed feature get small, noisy gradients, which plain Adam (``eps`` 1e-8)
scales up to full-size steps: the decoder then fits the training cells' noise. A large ``eps`` on
the decoders only (``TrainConfig.decoder_adam_eps``) turns those steps into small SGD steps, while
the encoders, library heads and classifiers keep ``TrainConfig.adam_eps``; see
``benchmarks/quality.py`` and ``benchmarks/panels.py``. Both default to plain AdamW's ``1e-8``.
"""

from __future__ import annotations

from typing import Any

import torch

from scamort.train.config import TrainConfig

__all__ = ["build_optimizer", "parameter_groups"]


def parameter_groups(module: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``module``, each with its ``eps``.

    Parameters
    ----------
    module
        The model; only its parameters that require a gradient are optimised, and those of its
        ``decoders`` (an ``nn.Module``, when it has one) form the decoder group.
    config
        ``decoder_adam_eps`` for the decoder group, ``adam_eps`` for every other parameter.

    Returns
    -------
    list of dict
        ``{"name", "params", "eps"}`` per non-empty group: ``"decoders"`` then ``"other"``.
    """
    decoders = getattr(module, "decoders", None)
    ids = {id(p) for p in decoders.parameters()} if isinstance(decoders, torch.nn.Module) else set()
    params = [p for p in module.parameters() if p.requires_grad]  # frozen ones are not optimised
    groups = [
        {"name": "decoders", "params": [p for p in params if id(p) in ids], "eps": config.decoder_adam_eps},
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
