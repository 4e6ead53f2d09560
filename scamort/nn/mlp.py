"""Fully connected blocks with covariates injected into every hidden layer."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

__all__ = ["CovariateMLP", "activation"]


def activation(n_features: int, dropout_rate: float) -> nn.Sequential:
    """What follows every affine map of a hidden layer: LayerNorm -> ReLU -> Dropout."""
    return nn.Sequential(
        nn.LayerNorm(n_features),
        nn.ReLU(),
        nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity(),
    )


class _Layer(nn.Module):
    def __init__(
        self,
        n_in: int,
        n_out: int,
        categorical_sizes: Sequence[int],
        n_continuous: int,
        dropout_rate: float,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in + n_continuous, n_out)
        # An embedding per categorical covariate is a one-hot linear map without the one-hot matrix.
        embeddings = [nn.Embedding(size, n_out) for size in categorical_sizes]
        for embedding in embeddings:
            nn.init.uniform_(embedding.weight, -(n_in**-0.5), n_in**-0.5)
        self.embeddings = nn.ModuleList(embeddings)
        self.activation = activation(n_out, dropout_rate)

    def forward(self, x: torch.Tensor, categorical: torch.Tensor, continuous: torch.Tensor) -> torch.Tensor:
        if continuous.shape[-1]:
            x = torch.cat([x, continuous], dim=-1)
        h = self.linear(x)
        for k, embedding in enumerate(self.embeddings):
            h = h + embedding(categorical[..., k])
        return self.activation(h)


class CovariateMLP(nn.Module):
    """``n_layers`` of Linear -> LayerNorm -> ReLU -> Dropout, covariates added in every layer.

    Parameters
    ----------
    n_in
        Input width.
    n_hidden
        Width of every hidden layer (and of the output).
    n_layers
        Number of hidden layers (0 gives the identity).
    dropout_rate
        Dropout after each layer.
    categorical_sizes
        Number of categories of each categorical covariate (empty for none).
    n_continuous
        Number of continuous covariates.
    """

    def __init__(
        self,
        n_in: int,
        n_hidden: int,
        n_layers: int,
        dropout_rate: float,
        categorical_sizes: Sequence[int] = (),
        n_continuous: int = 0,
    ) -> None:
        super().__init__()
        widths = [n_in] + [n_hidden] * n_layers
        self.layers = nn.ModuleList(
            _Layer(a, b, categorical_sizes, n_continuous, dropout_rate) for a, b in pairwise(widths)
        )

    def forward(self, x: torch.Tensor, categorical: torch.Tensor, continuous: torch.Tensor) -> torch.Tensor:
        """Map ``x`` of shape ``(batch, n_in)`` to ``(batch, n_hidden)``.

        ``categorical`` is ``(batch, n_categorical)`` int64, ``continuous`` ``(batch, n_continuous)``.
        """
        for layer in self.layers:
            x = layer(x, categorical, continuous)
        return x
