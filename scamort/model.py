"""``scamort.Model``: the AnnData-facing facade that composes data, module, training and inference.

Each public method is a short delegation to the module that owns its concept:

- construction (options checked, data registered, VAE built): :mod:`scamort.model_setup`;
- training, pretraining included: :mod:`scamort.model_training`;
- queries about each cell's posterior (latent, ELBO, marginal LL, refinement, amortization gap):
  :mod:`scamort.posterior_queries`; about a modality's expression (normalized, imputed, library sizes,
  posterior predictive): :mod:`scamort.expression_queries`; both read the model through
  :class:`scamort.model_parts.ModelParts`;
- differential expression: :mod:`scamort.differential`; saving and loading: :mod:`scamort.io` and
  :mod:`scamort.model_persistence`.

Methods implemented by one owner function carry that function's docstring (:func:`docstring_from`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from scamort import differential, expression_queries, model_persistence, model_training, posterior_queries
from scamort._docstrings import docstring_from
from scamort.amortization_gap import AmortizationGap
from scamort.data import Modality, Registry
from scamort.data.cell_data import counts_checksum, refuse_changed_counts
from scamort.data.sources import ModalityCounts
from scamort.labels import novelty as label_novelty
from scamort.labels import predict as predict_labels
from scamort.model_parts import ModelParts
from scamort.model_setup import DEFAULT_ALIGNMENT_WEIGHT as DEFAULT_ALIGNMENT_WEIGHT
from scamort.model_setup import DEFAULT_MIXING_WEIGHT as DEFAULT_MIXING_WEIGHT
from scamort.model_setup import DEFAULT_N_PRIVATE_LATENT as DEFAULT_N_PRIVATE_LATENT
from scamort.model_setup import DEFAULT_PANEL_MIXING_WEIGHT, build_module, init_params, register
from scamort.query_mapping import load_query_data
from scamort.refine import DEFAULT_LR, DEFAULT_N_SAMPLES, RefinementResult

__all__ = ["Model"]


class Model:
    """A negative-binomial VAE for single-cell counts.

    Parameters
    ----------
    adata
        Cells × genes AnnData with raw counts (in ``.X`` or ``layer``), or a MuData with
        ``modalities``. Only read, never modified.
    layer
        Layer holding raw counts; ``None`` uses ``.X``. Only without ``modalities`` (each
        :class:`Modality` names its own).
    batch_key
        ``.obs`` column of batches; decoders condition on it (batch correction).
    labels_key
        ``.obs`` column of cell labels (missing values: unlabelled cells), learned as scANVI does, for
        :meth:`predict` (see :mod:`scamort.labels`).
    categorical_covariate_keys, continuous_covariate_keys
        Extra ``.obs`` columns the decoders condition on; continuous ones enter standardised with the
        training cells' mean and standard deviation (the same at query time), so their units do not
        matter.
    n_latent
        Dimension of the shared latent space.
    n_hidden
        Width of each hidden layer of the encoders and decoders.
    n_layers
        Hidden layers per network.
    dropout_rate
        Dropout in the encoders.
    likelihood
        ``"nb"`` (negative binomial), ``"zinb"`` (zero-inflated NB) or ``"poisson"``. Only without
        ``modalities`` (each :class:`Modality` names its own).
    dispersion
        ``"gene"`` (one inverse dispersion per gene) or ``"gene-batch"`` (per gene and batch).
    seed
        Seeds the weights, the training split and all sampling during training.
    modalities
        Several modalities: name -> :class:`scamort.Modality`. With a MuData the names are its modality
        names and each is read from ``mdata.mod[name]`` (cells absent there are missing that modality); with
        an AnnData each is read from its ``X``, a layer or ``obsm`` (e.g. CITE-seq protein in
        ``obsm["protein_expression"]``). Encoders and decoders are built per modality and their posteriors
        are merged by a product of experts with the prior.
    modality_dropout
        With several modalities: during training, the probability that a cell's posterior uses one randomly
        chosen measured modality only (all are still reconstructed), so that each expert alone embeds cells
        well and imputes the other modalities. With a feature mask (``Modality(measured_key=...)``) it is
        also the probability that a cell's encoder reads only the features another cell of the minibatch
        measured too (panel dropout, see ``scamort.module.ModuleConfig``).
    alignment_weight
        With several modalities: during training, add this weight times the symmetric KL between the
        single-modality posteriors of each cell measured in several modalities (warmed up like the KL). It
        makes the experts agree, so that cells measured in one modality are embedded among the paired cells
        instead of apart from them. 0 turns it off.
    mixing_weight
        With several modalities, for data whose cells were measured in different sets of modalities (e.g.
        paired, RNA-only and protein-only cells): during training, a small classifier learns to tell each
        cell's set of measured modalities from its posterior mean (the embedding), and the encoders are
        penalised by this weight times their loss for fooling it (MULTIVI's adversarial mixing). A cell
        measured in one modality has a posterior mean shrunk towards the centre of what that modality
        cannot tell apart, so without it such cells sit together instead of among the paired cells. No
        effect when every cell has the same modalities, and none on the ELBO; 0 turns it off.
    panel_mixing_weight
        With a feature mask (``Modality(measured_key=...)``) whose cells were measured on different panels:
        the same adversarial mixing for panels, which the masked encoder sees
        (``scamort.nn.classifier.PanelClassifier``). No effect without a mask; 0 turns it off.
    n_private_latent
        With several modalities: latent dimensions private to each modality, besides the ``n_latent``
        shared ones; an int for every modality or a mapping modality name -> int (modalities not named get
        none). Modality m's decoder reads the shared dimensions and m's private ones, whose posterior comes
        from m's encoder and the prior only (the prior for a cell lacking m, and for the modalities left
        out under modality dropout), so variation that only m sees need not occupy the shared space. The
        embedding (:meth:`get_latent_representation`) is the shared part; imputing m for a cell lacking it
        decodes the prior's mean, 0, for m's private dimensions. 0 (default) for none; no effect with one
        modality.

    Notes
    -----
    With several modalities every library-scaled modality (all but ``"bernoulli"``) also gets a library-size
    head: a Gaussian over the cell's log library given the latent of its other modalities (read detached, so
    it changes neither the embedding nor the ELBO). :meth:`impute` and
    ``get_normalized_expression(library_size="latent")`` use it for cells lacking the modality.

    Examples
    --------
    >>> import scamort, scanpy as sc
    >>> adata = scamort.datasets.worm_neurons()
    >>> model = scamort.Model(adata)
    >>> model.train(max_epochs=50)
    >>> scamort.tl.embed(adata, model)
    >>> sc.pp.neighbors(adata, use_rep="X_scamort")
    """

    def __init__(
        self,
        adata: ad.AnnData,
        *,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        likelihood: str = "nb",
        dispersion: str = "gene",
        seed: int = 0,
        modalities: Mapping[str, Modality] | None = None,
        modality_dropout: float = 0.3,
        alignment_weight: float = DEFAULT_ALIGNMENT_WEIGHT,
        n_private_latent: int | Mapping[str, int] = DEFAULT_N_PRIVATE_LATENT,
        mixing_weight: float = DEFAULT_MIXING_WEIGHT,
        panel_mixing_weight: float = DEFAULT_PANEL_MIXING_WEIGHT,
    ) -> None:
        params = init_params(
            adata,
            layer=layer,
            batch_key=batch_key,
            labels_key=labels_key,
            categorical_covariate_keys=categorical_covariate_keys,
            continuous_covariate_keys=continuous_covariate_keys,
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            likelihood=likelihood,
            dispersion=dispersion,
            seed=seed,
            modalities=modalities,
            modality_dropout=modality_dropout,
            alignment_weight=alignment_weight,
            n_private_latent=n_private_latent,
            mixing_weight=mixing_weight,
            panel_mixing_weight=panel_mixing_weight,
        )
        registry, read = register(adata, params)
        self._setup(adata, registry, params, read)

    # ------------------------------------------------------------------ construction
    def _setup(
        self,
        adata: ad.AnnData,
        registry: Registry,
        init_params: dict[str, Any],
        read: dict[str, ModalityCounts] | None = None,
    ) -> None:
        """Attach ``adata``: encode it and build the VAE (from the constructor or a saved model)."""
        self.adata = adata
        self.registry = registry
        self.init_params = init_params
        self._data, self.module = build_module(adata, registry, init_params, read)
        self._checksum = counts_checksum(self._data)
        self.history: pd.DataFrame | None = None
        self.train_indices: np.ndarray | None = None
        self.validation_indices: np.ndarray | None = None
        self.is_trained = False

    def _parts(self) -> ModelParts:
        """What the query modules read of this model; refuses counts changed in place since encoding."""
        refuse_changed_counts(self._data, self._checksum)
        return ModelParts(self.module, self.registry, self.adata, self._data)

    @property
    def n_latent(self) -> int:
        """Latent dimension of the embedding (the shared dimensions; private ones not counted)."""
        return self.module.config.n_shared

    @property
    def device(self) -> torch.device:
        """Where the module's weights are."""
        return next(self.module.parameters()).device

    # ------------------------------------------------------------------ training
    @docstring_from(model_training.train)
    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 128,
        lr: float | None = None,
        weight_decay: float | None = None,
        train_size: float = 0.9,
        early_stopping: bool = True,
        early_stopping_patience: int | None = None,
        device: str = "auto",
        kl_warmup_epochs: int | None = None,
        progress_bar: bool = True,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 1,
        lr_scaling: str = "linear",
        max_seconds: float | None = None,
        pretrain_modality: str | None = None,
    ) -> pd.DataFrame:
        result = model_training.train(
            self.module,
            self._parts().data,
            self.registry.modality_names,
            self.init_params["seed"],
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            train_size=train_size,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            device=device,
            kl_warmup_epochs=kl_warmup_epochs,
            progress_bar=progress_bar,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            lr_scaling=lr_scaling,
            max_seconds=max_seconds,
            pretrain_modality=pretrain_modality,
            defaults=model_training.defaults_for(self.init_params),
        )
        self.history = result.history
        self.train_indices = result.train_indices
        self.validation_indices = result.validation_indices
        self.is_trained = True
        return self.history

    # ------------------------------------------------------------------ posterior queries
    @docstring_from(posterior_queries.refine)
    def refine(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        n_steps: int = 20,
        lr: float = DEFAULT_LR,
        n_samples: int = DEFAULT_N_SAMPLES,
        batch_size: int = 512,
        seed: int = 0,
        record_elbo_at: Sequence[int] = (),
    ) -> RefinementResult:
        return posterior_queries.refine(
            self._parts(),
            adata,
            indices,
            n_steps=n_steps,
            lr=lr,
            n_samples=n_samples,
            batch_size=batch_size,
            seed=seed,
            record_elbo_at=record_elbo_at,
        )

    @docstring_from(posterior_queries.amortization_gap)
    def amortization_gap(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        steps: Sequence[int] = (5, 20, 50),
        n_optimum_steps: int = 200,
    ) -> AmortizationGap:
        return posterior_queries.amortization_gap(
            self._parts(), adata, indices, steps=steps, n_optimum_steps=n_optimum_steps
        )

    @docstring_from(posterior_queries.latent_representation)
    def get_latent_representation(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        give_mean: bool = True,
        modality: str | None = None,
        refine_steps: int = 0,
    ) -> np.ndarray:
        return posterior_queries.latent_representation(
            self._parts(), adata, indices, give_mean=give_mean, modality=modality, refine_steps=refine_steps
        )

    @docstring_from(posterior_queries.elbo)
    def get_elbo(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        return_mean: bool = True,
        refine_steps: int = 0,
    ) -> float | np.ndarray:
        return posterior_queries.elbo(
            self._parts(), adata, indices, return_mean=return_mean, refine_steps=refine_steps
        )

    @docstring_from(posterior_queries.reconstruction_error)
    def get_reconstruction_error(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        return_mean: bool = True,
    ) -> dict[str, float | np.ndarray]:
        return posterior_queries.reconstruction_error(self._parts(), adata, indices, return_mean=return_mean)

    @docstring_from(posterior_queries.marginal_ll)
    def get_marginal_ll(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        n_mc_samples: int = 1000,
        return_mean: bool = True,
        refine_steps: int = 0,
    ) -> float | np.ndarray:
        return posterior_queries.marginal_ll(
            self._parts(),
            adata,
            indices,
            n_mc_samples=n_mc_samples,
            return_mean=return_mean,
            refine_steps=refine_steps,
        )

    @docstring_from(predict_labels)
    def predict(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        soft: bool = False,
        batch_size: int = 4096,
    ) -> np.ndarray | pd.DataFrame:
        return predict_labels(self._parts(), adata, indices, soft=soft, batch_size=batch_size)

    @docstring_from(label_novelty)
    def novelty(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int = 4096,
    ) -> pd.Series:
        return label_novelty(self._parts(), adata, indices, batch_size)

    # ------------------------------------------------------------------ expression queries
    @docstring_from(expression_queries.normalized_expression)
    def get_normalized_expression(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        transform_batch: str | None = None,
        library_size: float | str = 1e4,
        n_samples: int = 1,
        modality: str | None = None,
        refine_steps: int = 0,
        include_background: bool = True,
    ) -> pd.DataFrame:
        return expression_queries.normalized_expression(
            self._parts(),
            adata,
            indices,
            transform_batch=transform_batch,
            library_size=library_size,
            n_samples=n_samples,
            modality=modality,
            refine_steps=refine_steps,
            include_background=include_background,
        )

    @docstring_from(expression_queries.predict_library_size)
    def predict_library_size(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        modality: str | None = None,
    ) -> np.ndarray:
        return expression_queries.predict_library_size(self._parts(), adata, indices, modality=modality)

    @docstring_from(expression_queries.impute)
    def impute(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        modality: str | None = None,
        n_samples: int = 1,
        include_background: bool = True,
    ) -> pd.DataFrame:
        return expression_queries.impute(
            self._parts(),
            adata,
            indices,
            modality=modality,
            n_samples=n_samples,
            include_background=include_background,
        )

    @docstring_from(expression_queries.posterior_predictive_sample)
    def posterior_predictive_sample(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        n_samples: int = 1,
        modality: str | None = None,
    ) -> np.ndarray:
        return expression_queries.posterior_predictive_sample(
            self._parts(), adata, indices, n_samples=n_samples, modality=modality
        )

    @docstring_from(differential.model_differential_expression)
    def differential_expression(
        self,
        adata: ad.AnnData | None = None,
        groupby: str | None = None,
        group1: Any = None,
        group2: Any | None = None,
        mode: str = "change",
        delta: float = 0.25,
        batch_correction: bool = True,
        **options: Any,
    ) -> pd.DataFrame:
        return differential.model_differential_expression(
            self, adata, groupby, group1, group2, mode, delta, batch_correction, **options
        )

    # ------------------------------------------------------------------ persistence
    @docstring_from(model_persistence.save_model)
    def save(self, dir_path: str | Path, overwrite: bool = False) -> None:
        model_persistence.save_model(
            dir_path,
            overwrite,
            init_params=self.init_params,
            registry=self.registry,
            module=self.module,
            history=self.history,
            train_indices=self.train_indices,
            validation_indices=self.validation_indices,
            is_trained=self.is_trained,
        )

    @classmethod
    @docstring_from(model_persistence.read_saved)
    def load(cls, dir_path: str | Path, adata: ad.AnnData, device: str = "auto") -> Model:
        return model_persistence.load_model(cls, dir_path, adata, device)

    @classmethod
    @docstring_from(load_query_data)
    def load_query_data(
        cls,
        query: ad.AnnData,
        reference: Model | str | Path,
        *,
        batch_key: str | None = None,
        encoder_shift: bool = False,
        gene_shift: bool = True,
        seed: int | None = None,
    ) -> Model:
        return load_query_data(
            cls,
            query,
            reference,
            batch_key=batch_key,
            encoder_shift=encoder_shift,
            gene_shift=gene_shift,
            seed=seed,
        )

    def __repr__(self) -> str:
        return self._parts().describe(self.history, self.is_trained)
