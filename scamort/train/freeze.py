"""Keeping part of a module's weights fixed for one training run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["frozen"]


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block, ``module``'s parameters get no gradient, so no optimizer step (and no
    weight decay) changes them; afterwards each parameter's ``requires_grad`` is as before."""
    parameters = list(module.parameters())
    before = [parameter.requires_grad for parameter in parameters]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield module
    finally:
        for parameter, flag in zip(parameters, before, strict=True):
            parameter.requires_grad_(flag)
