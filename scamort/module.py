"""The VAE: per-modality encoders -> product of experts -> z -> per-modality decoders -> ELBO terms.

The posterior type and its divergences live in :mod:`scamort.posterior` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from scamort.data.cell_data import Minibatch
from scamort.distributions import CountDistribution
from scamort.masked_likelihood import dropped_panel, masked_log_prob_rows, renormalised
from scamort.nn import CountDecoder, GaussianEncoder, product_of_experts
from scamort.nn.classifier import PanelClassifier, PatternClassifier, panel_mixing_loss, presence_pattern
from scamort.nn.decoder import DepthBernoulliDecoder, NegativeBinomialMixtureDecoder, build_decoder
from scamort.nn.label_classifier import LabelClassifier
from scamort.nn.library import LibraryHead
from scamort.posterior import (
    Posterior,
    gaussian_kl,
    jeffreys_divergence,
    single_expert_posteriors,
    standard_normal_log_prob,
)

__all__ = [
    "LIBRARY_LIKELIHOODS",
    "LossTerms",
    "ModuleConfig",
    "Posterior",
    "VAE",
    "gaussian_kl",
    "jeffreys_divergence",
    "single_expert_posteriors",
    "standard_normal_log_prob",
]

#: Likelihoods whose decoders scale by the cell's library size (and so get a library-size head).
LIBRARY_LIKELIHOODS = ("nb", "zinb", "poisson", "nbmixture", "bernoulli_depth")


@dataclass(frozen=True)
class ModuleConfig:
    """Architecture of a :class:`VAE`.

    Attributes
    ----------
    modalities
        ``(name, n_features, likelihood)`` per modality, in model order.
    n_latent, n_hidden, n_layers, dropout_rate
        Latent dimension and MLP shape (dropout applies to encoders only).
    dispersion
        ``"gene"`` or ``"gene-batch"``.
    modality_dropout
        During training, the probability that a cell's posterior is formed from one of its measured
        modalities only (chosen at random) while all of them are still reconstructed. This trains each
        expert to explain every modality on its own, which is what cells measured in one modality
        and cross-modal imputation need. No effect with a single modality.
    n_batch
        Number of batches.
    categorical_sizes
        Category counts of decoder covariates (batch first when there is a batch key).
    n_continuous
        Number of continuous covariates.
    alignment_weight
        During training, add ``alignment_weight ×`` the symmetric KL (Jeffreys divergence) between
        the single-modality posteriors (each expert with the prior) of every cell measured in
        several modalities, scaled by the KL warm-up weight like the KL. It pulls each expert's
        posterior towards where the others put the cell, so cells measured in one modality land
        among paired cells. Not part of the ELBO (validation and every query ignore it).
    library_heads
        With several modalities, fit a :class:`scamort.nn.library.LibraryHead` per library-scaled
        modality (``LIBRARY_LIKELIHOODS``): a Gaussian over the cell's log library size given the
        (detached) posterior mean of its other modalities, used to impute counts for cells lacking
        the modality.
    private_dims
        Latent dimensions private to each modality, in model order (empty: none). ``n_latent`` is
        the width of the whole latent vector: the first ``n_latent - sum(private_dims)`` dimensions
        are shared by all modalities, then come each modality's private block. Modality m's decoder
        reads the shared dimensions and its own block; its encoder's expert speaks to the same
        dimensions (precision 0 elsewhere, see :func:`product_of_experts`). So a private block has
        the prior and that one expert: for a cell lacking m (or, under modality dropout, whose
        posterior leaves m's expert out) it is the prior, and m is decoded from the shared
        dimensions with the private ones drawn from N(0, I). Variation that only m sees can live
        there instead of in the shared dimensions, the embedding. The alignment term compares
        shared dimensions only.
    mixing_weight
        With several modalities and cells measured in different sets of them: train a
        :class:`scamort.nn.classifier.PatternClassifier` to tell each cell's set of measured
        modalities from its posterior mean (shared dimensions), and add ``mixing_weight ×`` the
        encoders' loss for fooling it (MULTIVI's adversarial mixing). 0: off. Not part of the ELBO.
    masked, panel_dropout
        Modalities with a feature mask (``Modality.measured_key``), and the training-time probability
        that their encoders read a cell on a narrower panel (:mod:`scamort.masked_likelihood`).
    panel_mixing_weight
        With masked modalities: train a :class:`scamort.nn.classifier.PanelClassifier` per masked
        modality to tell which of its features a cell measured from its posterior mean (shared
        dimensions), and add ``panel_mixing_weight ×`` the encoders' loss for fooling it. 0: off.
        Not part of the ELBO.
    n_labels, label_weight, label_gradient
        With ``n_labels > 0``: a :class:`~scamort.nn.label_classifier.LabelClassifier` reads each
        cell's latent sample (shared dimensions; detached unless ``label_gradient``) and adds
        ``label_weight ×`` its class-weighted cross-entropy for labelled cells. Not part of the ELBO.
    """

    modalities: tuple[tuple[str, int, str], ...]
    n_latent: int = 10
    n_hidden: int = 128
    n_layers: int = 1
    dropout_rate: float = 0.1
    dispersion: str = "gene"
    modality_dropout: float = 0.0
    n_batch: int = 1
    categorical_sizes: tuple[int, ...] = field(default_factory=tuple)
    n_continuous: int = 0
    alignment_weight: float = 0.0
    library_heads: bool = False
    private_dims: tuple[int, ...] = ()
    mixing_weight: float = 0.0
    masked: tuple[str, ...] = ()
    panel_dropout: float = 0.0
    panel_mixing_weight: float = 0.0
    n_labels: int = 0
    label_weight: float = 0.0
    label_gradient: bool = True

    @property
    def n_shared(self) -> int:
        """Number of latent dimensions shared by all modalities (the embedding)."""
        return self.n_latent - sum(self.private_dims)


@dataclass(frozen=True)
class LossTerms:
    """Per-cell ELBO terms.

    Attributes
    ----------
    reconstruction
        Modality name -> ``log p(x_m | z)`` per cell, shape ``(batch,)``, zero for absent modalities.
    kl
        KL(q(z|x) || p(z)) per cell, shape ``(batch,)``.
    alignment
        Training only (else None): the weighted Jeffreys divergence between single-modality
        posteriors, per cell ``(batch,)`` (see :class:`ModuleConfig`); weighted like the KL.
    library
        Training only (else None): the library-size heads' negative log-likelihood per cell
        ``(batch,)``, summed over modalities; it only reaches the heads' weights.
    mixing
        Training only (else None): the presence-pattern and panel classifiers' losses plus the
        weighted encoders' losses for fooling them, per cell ``(batch,)`` (see :class:`ModuleConfig`).
    labels
        Training only (else None): the weighted label classification loss per cell ``(batch,)``.
    """

    reconstruction: dict[str, torch.Tensor]
    kl: torch.Tensor
    alignment: torch.Tensor | None = None
    library: torch.Tensor | None = None
    mixing: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    @property
    def total_reconstruction(self) -> torch.Tensor:
        """Sum of the modalities' reconstruction terms, shape ``(batch,)``."""
        terms = list(self.reconstruction.values())
        return terms[0] if len(terms) == 1 else torch.stack(terms).sum(0)

    def elbo(self, kl_weight: float = 1.0) -> torch.Tensor:
        """Per-cell (weighted) ELBO, shape ``(batch,)``; during training minus the extra terms
        (``kl_weight × alignment + library + mixing + labels``), which makes it the per-cell training
        objective. Outside training the extra terms are None and this is the ELBO."""
        out = self.total_reconstruction - kl_weight * self.kl
        if self.alignment is not None:
            out = out - kl_weight * self.alignment
        if self.library is not None:
            out = out - self.library
        if self.mixing is not None:
            out = out - self.mixing
        if self.labels is not None:
            out = out - self.labels
        return out


class VAE(nn.Module):
    """A multimodal VAE with a product-of-experts posterior.

    The contract mirrors scvi-tools' modules: :meth:`posterior` (inference), :meth:`generative`
    (returns real distribution objects), :meth:`loss_terms` (a typed record of per-cell terms).
    """

    def __init__(self, config: ModuleConfig) -> None:
        super().__init__()
        self.config = config
        private = config.private_dims or (0,) * len(config.modalities)
        if len(private) != len(config.modalities) or min(private) < 0 or config.n_shared < 1:
            raise ValueError(
                f"private_dims {config.private_dims} must give one size >= 0 per modality and leave "
                f"at least one of the n_latent={config.n_latent} dimensions shared."
            )
        # Modality name -> (start, stop) of its private block within the latent vector.
        self.private_blocks: dict[str, tuple[int, int]] = {}
        start = config.n_shared
        for (name, _, _), size in zip(config.modalities, private, strict=True):
            self.private_blocks[name] = (start, start + size)
            start += size
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        for (name, n_features, likelihood), size in zip(config.modalities, private, strict=True):
            width = config.n_shared + size
            shape = (config.n_hidden, config.n_layers, config.dropout_rate)
            self.encoders[name] = GaussianEncoder(n_features, width, *shape, masked=name in config.masked)
            self.decoders[name] = build_decoder(config, width, n_features, likelihood)
        # Which latent dimensions each expert speaks to (None: all); not saved with the weights.
        dims = None
        if any(private):
            dims = torch.zeros(len(config.modalities), config.n_latent, dtype=torch.bool)
            dims[:, : config.n_shared] = True
            for row, (first, stop) in enumerate(self.private_blocks.values()):
                dims[row, first:stop] = True
        self.expert_dims: torch.Tensor | None
        self.register_buffer("expert_dims", dims, persistent=False)
        self.library_heads = nn.ModuleDict()
        if config.library_heads and len(config.modalities) > 1:
            for name, _, likelihood in config.modalities:
                if likelihood in LIBRARY_LIKELIHOODS:
                    self.library_heads[name] = LibraryHead(
                        config.n_latent,
                        config.n_hidden,
                        config.n_batch,
                        config.categorical_sizes,
                        config.n_continuous,
                    )
        # Built last, so that the other weights start as they would without it.
        self.pattern_classifier = (
            PatternClassifier(config.n_shared, len(config.modalities))
            if config.mixing_weight > 0 and len(config.modalities) > 1
            else None
        )
        self.label_classifier = (
            LabelClassifier(config.n_shared, config.n_labels, config.n_hidden) if config.n_labels else None
        )
        self.panel_classifiers = nn.ModuleDict()
        if config.panel_mixing_weight > 0:
            for name, n_features, _ in config.modalities:
                if name in config.masked:
                    self.panel_classifiers[name] = PanelClassifier(config.n_shared, n_features)

    @property
    def modality_names(self) -> tuple[str, ...]:
        """Modality names in model order."""
        return tuple(name for name, _, _ in self.config.modalities)

    def posterior(
        self,
        batch: Minibatch,
        modalities: Sequence[str] | None = None,
        expert_mask: torch.Tensor | None = None,
    ) -> Posterior:
        """q(z | x): the product of the prior and the experts of ``modalities`` (default all) that
        each cell has; ``expert_mask`` ``(n_modalities, batch)`` overrides which experts are used."""
        mean, log_variance, present = self.experts(batch, modalities)
        mask = present if expert_mask is None else expert_mask
        return Posterior(*self.product(mean, log_variance, mask, modalities))

    def product(
        self,
        mean: torch.Tensor,
        log_variance: torch.Tensor,
        mask: torch.Tensor,
        modalities: Sequence[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`product_of_experts` of experts from :meth:`experts` (of ``modalities``, default
        all), each restricted to the shared dimensions and its own private block."""
        dims = self.expert_dims
        if dims is not None and modalities is not None:
            dims = dims[[self.modality_names.index(name) for name in modalities]]
        return product_of_experts(mean, log_variance, mask, dims)

    def experts(
        self, batch: Minibatch, modalities: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoders' Gaussian experts of ``modalities`` (default all): means and log-variances
        ``(n_modalities, batch, n_latent)`` and which cells have each modality ``(n_modalities, batch)``.

        With private dimensions an expert's values outside the shared dimensions and its own block
        are 0 (and carry no precision in :meth:`product`)."""
        names = self.modality_names if modalities is None else tuple(modalities)
        means, log_variances = [], []
        for name in names:
            modality = batch.modalities[name]
            measured = dropped_panel(modality.measured, self.config.panel_dropout if self.training else 0.0)
            mean, log_variance = self.encoders[name](modality.counts, measured, batch.batch_index)
            means.append(self._widen(mean, name))
            log_variances.append(self._widen(log_variance, name))
        present = torch.stack([batch.modalities[name].present for name in names])
        return torch.stack(means), torch.stack(log_variances), present

    def _dropped_expert_mask(self, present: torch.Tensor) -> torch.Tensor | None:
        """Training-time expert mask with modality dropout (see :class:`ModuleConfig`), or None;
        ``present`` is ``(n_modalities, batch)``."""
        if not self.training or self.config.modality_dropout <= 0 or len(self.modality_names) < 2:
            return None
        weights = present.T.to(torch.float32) + 1e-12
        chosen = torch.multinomial(weights, 1).squeeze(1)
        single = torch.nn.functional.one_hot(chosen, present.shape[0]).T.bool() & present
        dropped = torch.rand(present.shape[1], device=present.device) < self.config.modality_dropout
        return torch.where(dropped, single, present)

    def _widen(self, values: torch.Tensor, name: str) -> torch.Tensor:
        """An encoder output ``(batch, n_shared + private)`` placed into the latent vector's width
        ``(batch, n_latent)``, zeros outside the shared dimensions and ``name``'s block."""
        if self.expert_dims is None:
            return values
        shared = self.config.n_shared
        start, stop = self.private_blocks[name]
        parts = [values[:, :shared]]
        if start > shared:
            parts.append(values.new_zeros(values.shape[0], start - shared))
        parts.append(values[:, shared:])
        if stop < self.config.n_latent:
            parts.append(values.new_zeros(values.shape[0], self.config.n_latent - stop))
        return torch.cat(parts, dim=1)

    def decoder_input(self, z: torch.Tensor, name: str) -> torch.Tensor:
        """What modality ``name``'s decoder reads of ``z`` ``(..., n_latent)``: the shared
        dimensions and its private block, ``(..., n_shared + private)``."""
        if self.expert_dims is None:
            return z
        start, stop = self.private_blocks[name]
        return torch.cat([z[..., : self.config.n_shared], z[..., start:stop]], dim=-1)

    def generative(self, z: torch.Tensor, batch: Minibatch) -> dict[str, CountDistribution]:
        """Each modality's distribution given ``z`` of shape ``(batch, n_latent)``."""
        return {name: self.decode(z, batch, name) for name in self.modality_names}

    def decode(
        self, z: torch.Tensor, batch: Minibatch, name: str, log_library: torch.Tensor | None = None
    ) -> CountDistribution:
        """Modality ``name``'s distribution given ``z`` ``(batch, n_latent)``, at the cells' own log
        library sizes (under a feature mask renormalised to the measured features, :func:`renormalised`)
        or at ``log_library`` ``(batch,)``."""
        distribution = self.decoders[name](
            self.decoder_input(z, name),
            log_library=batch.modalities[name].log_library if log_library is None else log_library,
            batch_index=batch.batch_index,
            categorical=batch.categorical,
            continuous=batch.continuous,
        )
        measured = batch.modalities[name].measured
        if measured is not None and log_library is None:
            distribution = renormalised(distribution, measured)
        return distribution

    def reconstruction(self, z: torch.Tensor, batch: Minibatch) -> dict[str, torch.Tensor]:
        """``log p(x_m | z)`` per modality and cell (zero where absent), each ``(batch,)``."""
        out = {}
        for name, distribution in self.generative(z, batch).items():
            modality = batch.modalities[name]
            log_lik = masked_log_prob_rows(distribution, modality.counts, modality.measured)
            out[name] = torch.where(modality.present, log_lik, torch.zeros_like(log_lik))
        return out

    def forward(self, batch: Minibatch) -> LossTerms:
        """One-sample ELBO terms of a training minibatch (what DistributedDataParallel calls)."""
        return self.loss_terms(batch)

    def loss_terms(
        self,
        batch: Minibatch,
        posterior: Posterior | None = None,
        generator: torch.Generator | None = None,
    ) -> LossTerms:
        """One-sample ELBO terms per cell (``posterior`` defaults to the encoders').

        While training with the encoders' posterior, the record also carries the alignment term and
        the library-size heads' loss (see :class:`LossTerms`)."""
        if posterior is not None:
            z = posterior.rsample(generator)
            return LossTerms(self.reconstruction(z, batch), gaussian_kl(posterior))
        mean, log_variance, present = self.experts(batch)
        mask = self._dropped_expert_mask(present)
        posterior = Posterior(*self.product(mean, log_variance, present if mask is None else mask))
        z = posterior.rsample(generator)
        terms = LossTerms(self.reconstruction(z, batch), gaussian_kl(posterior))
        if not self.training:
            return terms
        alignment = self.alignment(mean, log_variance, present) if self.config.alignment_weight > 0 else None
        library = self.library_loss(mean, log_variance, present, batch) if len(self.library_heads) else None
        mixing = self.mixing_loss(mean, log_variance, present, batch)
        labels = None
        if self.label_classifier is not None and batch.labels is not None:
            read = z[:, : self.config.n_shared]
            read = read if self.config.label_gradient else read.detach()
            labels = self.config.label_weight * self.label_classifier.loss(read, batch.labels)
        return LossTerms(terms.reconstruction, terms.kl, alignment, library, mixing, labels)

    def mixing_loss(
        self, mean: torch.Tensor, log_variance: torch.Tensor, present: torch.Tensor, batch: Minibatch
    ) -> torch.Tensor | None:
        """The adversarial mixing terms on each cell's joint posterior mean (all its measured
        modalities, shared dimensions; computed once for both), ``(batch,)``: the presence-pattern
        classifier's loss plus ``mixing_weight ×`` the encoders' fooling loss
        (:meth:`PatternClassifier.losses`; zero for a minibatch of one pattern only), plus the panel
        classifiers' (:func:`panel_mixing_loss`). None without either classifier."""
        if self.pattern_classifier is None and not len(self.panel_classifiers):
            return None
        total = torch.zeros(mean.shape[1], dtype=mean.dtype, device=mean.device)
        pattern = presence_pattern(present)
        several_patterns = not bool((pattern == pattern[0]).all())
        if not (len(self.panel_classifiers) or (self.pattern_classifier is not None and several_patterns)):
            return total
        joint_mean = self.product(mean, log_variance, present)[0][:, : self.config.n_shared]
        if self.pattern_classifier is not None and several_patterns:
            classifier, fool = self.pattern_classifier.losses(joint_mean, pattern)
            total = total + classifier + self.config.mixing_weight * fool
        if len(self.panel_classifiers):
            total = total + panel_mixing_loss(
                self.panel_classifiers, joint_mean, batch, self.config.panel_mixing_weight
            )
        return total

    def alignment(
        self, mean: torch.Tensor, log_variance: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        """``alignment_weight × sum_{m < m'} J(q_m, q_m')`` over pairs of modalities a cell has, where
        ``q_m`` is expert m with the prior, on the shared dimensions; experts as from :meth:`experts`.
        Shape ``(batch,)``."""
        shared = self.config.n_shared
        singles = single_expert_posteriors(mean[..., :shared], log_variance[..., :shared])
        total = torch.zeros(mean.shape[1], dtype=mean.dtype, device=mean.device)
        for i in range(mean.shape[0]):
            for j in range(i + 1, mean.shape[0]):
                divergence = jeffreys_divergence(
                    Posterior(singles.mean[i], singles.log_variance[i]),
                    Posterior(singles.mean[j], singles.log_variance[j]),
                )
                total = total + torch.where(present[i] & present[j], divergence, torch.zeros_like(divergence))
        return self.config.alignment_weight * total

    def library_loss(
        self, mean: torch.Tensor, log_variance: torch.Tensor, present: torch.Tensor, batch: Minibatch
    ) -> torch.Tensor:
        """Negative log-likelihood of the observed log library sizes under the library-size heads,
        ``(batch,)``, summed over the modalities with a head.

        Each head learns modality m's library from the posterior mean of the *other* modalities
        (:meth:`library_latent`), the situation in which it is used: a cell lacking m. Cells with m
        and at least one other modality count. The latent is detached, so only the heads learn."""
        total = torch.zeros(mean.shape[1], dtype=mean.dtype, device=mean.device)
        for name in self.library_heads:
            head = self.library_head(name)
            position = self.modality_names.index(name)
            others = present.clone()
            others[position] = False
            z, _ = self.product(mean, log_variance, others)
            nll = head.negative_log_likelihood(
                z,
                batch.modalities[name].log_library,
                batch_index=batch.batch_index,
                categorical=batch.categorical,
                continuous=batch.continuous,
            )
            counted = present[position] & others.any(0)
            total = total + torch.where(counted, nll, torch.zeros_like(nll))
        return total

    def library_latent(self, batch: Minibatch, modality: str) -> torch.Tensor:
        """What ``modality``'s library-size head reads: the posterior mean from the cell's other
        modalities (the prior's mean, 0, for a cell with no other), ``(batch, n_latent)``."""
        others = tuple(name for name in self.modality_names if name != modality)
        return self.posterior(batch, others).mean

    def library_head(self, modality: str) -> LibraryHead:
        """Modality ``modality``'s library-size head (a ``KeyError`` for a modality without one)."""
        head = self.library_heads[modality]
        assert isinstance(head, LibraryHead)
        return head

    def decoder(self, modality: str) -> CountDecoder | NegativeBinomialMixtureDecoder | DepthBernoulliDecoder:
        """Modality ``modality``'s decoder."""
        decoder = self.decoders[modality]
        assert isinstance(decoder, CountDecoder | NegativeBinomialMixtureDecoder | DepthBernoulliDecoder)
        return decoder

    def library(self, batch: Minibatch, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted mean and log-variance of ``modality``'s log library for each cell of ``batch``
        (from :meth:`library_latent`), each ``(batch,)``."""
        return self.library_heads[modality](
            self.library_latent(batch, modality),
            batch_index=batch.batch_index,
            categorical=batch.categorical,
            continuous=batch.continuous,
        )
