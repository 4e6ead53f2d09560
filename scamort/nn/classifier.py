"""An adversarial classifier of which modalities a cell was measured in, read from its latent.

With unpaired data the cells fall into groups by their set of measured modalities (e.g. paired,
RNA-only, protein-only). If the embedding tells these groups apart, cells measured in one modality
sit apart from the paired ones instead of among them. The classifier learns to predict a cell's
group from its latent; the encoders learn to fool it (MULTIVI's adversarial mixing, after the
adversarial batch correction of Ganin & Lempitsky, 2015).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from scamort.nn.mlp import CovariateMLP

__all__ = ["PatternClassifier", "presence_pattern"]


def presence_pattern(present: torch.Tensor) -> torch.Tensor:
    """Each cell's set of measured modalities as a class ``sum_m present_m 2^m - 1`` in
    ``[0, 2^M - 1)``; ``present`` is ``(n_modalities, batch)`` bool, each cell with at least one."""
    powers = 2 ** torch.arange(present.shape[0], device=present.device)
    return (present.long() * powers[:, None]).sum(0) - 1


class PatternClassifier(nn.Module):
    """Logits over the ``2^M - 1`` presence patterns of ``M`` modalities, from a latent.

    Parameters
    ----------
    n_latent
        Width of the latent read.
    n_modalities
        Number of modalities ``M``.
    n_hidden
        Width of the two hidden layers.
    """

    def __init__(self, n_latent: int, n_modalities: int, n_hidden: int = 32) -> None:
        super().__init__()
        self.n_classes = 2**n_modalities - 1
        self.body = CovariateMLP(n_latent, n_hidden, 2, 0.0)
        self.head = nn.Linear(n_hidden, self.n_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_classes)`` for ``z`` of ``(batch, n_latent)``."""
        none = z.new_zeros(z.shape[0], 0)
        return self.head(self.body(z, none.long(), none))

    def losses(self, z: torch.Tensor, pattern: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's and the encoders' losses per cell, each ``(batch,)``.

        The first is the cross-entropy of the true ``pattern`` on the detached ``z``: it trains the
        classifier only. The second is the cross-entropy against a uniform distribution over the
        *other* patterns, with the classifier's weights detached: it trains only what produced
        ``z`` (MULTIVI's fool loss). Both can be summed into one objective.
        """
        classifier = -F.log_softmax(self(z.detach()), dim=-1).gather(1, pattern[:, None]).squeeze(1)
        frozen = {name: value.detach() for name, value in self.named_parameters()}
        log_p = F.log_softmax(functional_call(self, frozen, (z,)), dim=-1)
        others = 1 - F.one_hot(pattern, self.n_classes).to(log_p.dtype)
        fool = -(log_p * others).sum(1) / (self.n_classes - 1)
        return classifier, fool
