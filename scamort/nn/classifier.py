"""Adversarial classifiers of what was measured in a cell, read from its latent.

With unpaired data the cells fall into groups by their set of measured modalities (e.g. paired,
RNA-only, protein-only). If the embedding tells these groups apart, cells measured in one modality
sit apart from the paired ones instead of among them. :class:`PatternClassifier` learns to predict a
cell's group from its latent; the encoders learn to fool it (MULTIVI's adversarial mixing, after the
adversarial batch correction of Ganin & Lempitsky, 2015).

:class:`PanelClassifier` does the same one level down, for a modality with a feature mask: cells
measured on different panels (e.g. a batch stained with fewer antibodies) should not be told apart
by which features were measured, yet the masked encoder sees exactly that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from scamort.data.cell_data import Minibatch
from scamort.nn.mlp import CovariateMLP

__all__ = ["PanelClassifier", "PatternClassifier", "panel_mixing_loss", "presence_pattern"]


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


class PanelClassifier(nn.Module):
    """Per-feature logits of "measured" for one masked modality, from a latent.

    Only the features that some panels measured and others did not (``varying``, set from the data
    by :meth:`set_varying`) are scored; for two panels this is a binary classifier of the panel.

    Parameters
    ----------
    n_latent
        Width of the latent read.
    n_features
        Number of features of the modality.
    n_hidden
        Width of the two hidden layers.
    """

    varying: torch.Tensor

    def __init__(self, n_latent: int, n_features: int, n_hidden: int = 32) -> None:
        super().__init__()
        self.body = CovariateMLP(n_latent, n_hidden, 2, 0.0)
        self.head = nn.Linear(n_hidden, n_features)
        self.register_buffer("varying", torch.zeros(n_features, dtype=torch.bool))

    @torch.no_grad()
    def set_varying(self, panels: torch.Tensor) -> None:
        """Score the features measured in some but not all of ``panels`` ``(n_panels, n_features)``
        bool (the distinct measured patterns of the cells that have the modality)."""
        self.varying.copy_(panels.any(0) & ~panels.all(0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_varying)``, one per varying feature, from ``z`` ``(batch, n_latent)``."""
        none = z.new_zeros(z.shape[0], 0)
        return self.head(self.body(z, none.long(), none))[:, self.varying]

    def losses(self, z: torch.Tensor, measured: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's and the encoders' losses per cell, each ``(batch,)``, as
        :meth:`PatternClassifier.losses`: the binary cross-entropy of the true ``measured``
        ``(batch, n_features)`` on the detached ``z``, and with the classifier detached the
        cross-entropy of the other answer (the cell measured what it did not, and the reverse), each
        averaged over the varying features. Zeros when no feature varies."""
        if not bool(self.varying.any()):
            zero = z.new_zeros(z.shape[0])
            return zero, zero
        target = measured[:, self.varying].to(z.dtype)
        classifier = F.binary_cross_entropy_with_logits(self(z.detach()), target, reduction="none").mean(1)
        frozen = {name: value.detach() for name, value in self.named_parameters()}
        logits = functional_call(self, frozen, (z,))
        fool = F.binary_cross_entropy_with_logits(logits, 1 - target, reduction="none").mean(1)
        return classifier, fool


def panel_mixing_loss(
    classifiers: nn.ModuleDict, z: torch.Tensor, batch: Minibatch, weight: float
) -> torch.Tensor:
    """Each masked modality's :class:`PanelClassifier` loss plus ``weight ×`` the encoders' fooling
    loss, summed over the modalities, for the cells that have each, ``(batch,)``; ``z`` is the joint
    posterior mean ``(batch, n_shared)`` and the true panel (not a dropped one) is read. A frozen
    classifier (a query model's, :mod:`scamort.query_surgery`) is skipped: it cannot follow the encoders."""
    total = z.new_zeros(z.shape[0])
    for name, classifier in classifiers.items():
        modality = batch.modalities[name]
        if modality.measured is None or not any(p.requires_grad for p in classifier.parameters()):
            continue
        assert isinstance(classifier, PanelClassifier), "panel_classifiers holds PanelClassifiers"
        loss, fool = classifier.losses(z, modality.measured)
        total = total + torch.where(modality.present, loss + weight * fool, torch.zeros_like(loss))
    return total
