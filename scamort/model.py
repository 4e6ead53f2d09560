"""``scamort.Model``: the AnnData-facing class that composes data, module, training and inference."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from scamort import inference, io
from scamort._checks import is_real_number, is_whole_number
from scamort.amortization_gap import AmortizationGap, GapOptions, measure_amortization_gap
from scamort.data import CellData, Modality, Registry, build_registry, encode_cells
from scamort.data.backed import BackedCellData, is_backed
from scamort.data.sources import ModalityCounts, is_mudata, read_modalities
from scamort.errors import InputError
from scamort.module import VAE, ModuleConfig
from scamort.nn import DISPERSIONS
from scamort.nn.decoder import NegativeBinomialMixtureDecoder
from scamort.refine import (
    DEFAULT_LR,
    DEFAULT_N_SAMPLES,
    RefinementResult,
    maybe_refine,
    refine_posteriors,
)
from scamort.train import TrainConfig, default_kl_warmup_epochs, default_max_epochs, fit, resolve_device
from scamort.train.checkpoint import load_checkpoint, run_fingerprint
from scamort.train.freeze import frozen

__all__ = ["Model"]

logger = logging.getLogger(__name__)

RNA_LIKELIHOODS = ("nb", "zinb", "poisson")

#: ``lr_scaling`` rules: the learning rate is multiplied by ``(global batch / 128) ** exponent``.
LR_SCALING_EXPONENTS = {"sqrt": 0.5, "linear": 1.0, "none": 0.0}

#: Default ``alignment_weight`` (chosen on the multimodal benchmark, ``benchmarks/multimodal.py``).
DEFAULT_ALIGNMENT_WEIGHT = 1.0

#: Default ``n_private_latent`` (chosen on the multimodal benchmark, ``benchmarks/multimodal.py``).
DEFAULT_N_PRIVATE_LATENT = 0

#: Default ``mixing_weight`` (chosen on the multimodal benchmark, ``benchmarks/multimodal.py``).
DEFAULT_MIXING_WEIGHT = 20.0

#: Where ``train(pretrain_modality=..., checkpoint_dir=d)`` keeps the pretraining stage's checkpoint.
PRETRAIN_FOLDER = "pretrain"


def _check_choice(value: str, choices: Sequence[str], name: str) -> None:
    if value not in choices:
        raise InputError(f"{name}={value!r} is not supported; choose one of {', '.join(choices)}.")


def _private_sizes(value: int | Mapping[str, int], modalities: Mapping[str, Modality]) -> dict[str, int]:
    """``n_private_latent`` as modality name -> number of private dimensions (validated)."""
    sizes = dict(value) if isinstance(value, Mapping) else dict.fromkeys(modalities, value)
    unknown = sorted(set(sizes) - set(modalities))
    if unknown:
        raise InputError(
            f"n_private_latent names {', '.join(map(repr, unknown))}, not a modality of this model "
            f"({', '.join(map(repr, modalities))})."
        )
    for name, size in sizes.items():
        _check_positive_int(size, f"n_private_latent[{name!r}]", minimum=0)
    return {name: int(size) for name, size in sizes.items()}


def _check_positive_int(value: int, name: str, minimum: int = 1) -> None:
    if not is_whole_number(value, minimum):
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _positions(indices: Sequence[int] | np.ndarray, n_cells: int) -> np.ndarray:
    """Cell positions ``(k,)`` int64 from integer positions (negative ones count from the end) or a
    boolean mask of ``n_cells`` entries; refuses empty, fractional and out-of-range selections."""
    index = np.asarray(indices)
    if index.size == 0:
        raise InputError("indices selects no cells; pass at least one position, or None for every cell.")
    if index.dtype == bool:
        if index.shape != (n_cells,):
            raise InputError(
                f"A boolean indices mask needs one entry per cell ({n_cells}); got shape {index.shape}."
            )
        return np.flatnonzero(index).astype(np.int64)
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
        raise InputError(
            f"indices must be a 1-d list of integer positions or a boolean mask; got {index.dtype} values "
            f"of shape {index.shape}."
        )
    outside = index[(index < -n_cells) | (index >= n_cells)]
    if outside.size:
        raise InputError(f"indices must lie in [-{n_cells}, {n_cells}); got {outside[0]}.")
    return np.where(index < 0, index + n_cells, index).astype(np.int64)


def _modalities(
    data: object, modalities: Mapping[str, Modality] | None, *, layer: str | None, likelihood: str
) -> dict[str, Modality]:
    """The modality specs: given explicitly, or RNA from ``layer`` for a plain AnnData."""
    if is_mudata(data):
        if modalities is None:
            raise InputError(
                "For a MuData pass modalities={name: scamort.Modality(...)} naming which of its "
                f"modalities to model (it has {', '.join(data.mod)})."
            )
    elif not isinstance(data, ad.AnnData):
        raise InputError(f"Model expects an AnnData or MuData, got {type(data).__name__}.")
    if modalities is None:
        return {"rna": Modality(layer=layer, likelihood=likelihood)}
    if layer is not None or likelihood != "nb":
        raise InputError(
            "With modalities=..., give each modality's layer and likelihood in its scamort.Modality "
            "(layer= and likelihood= of the Model describe a single RNA AnnData)."
        )
    if not modalities:
        raise InputError("modalities is empty; name at least one modality.")
    for name, modality in modalities.items():
        if not isinstance(modality, Modality):
            raise InputError(f"modalities[{name!r}] must be a scamort.Modality, got {modality!r}.")
    return dict(modalities)


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
        ``.obs`` column of cell labels, recorded for downstream use.
    categorical_covariate_keys, continuous_covariate_keys
        Extra ``.obs`` columns the decoders condition on; continuous ones enter standardised with the
        training cells' mean and standard deviation (the same at query time), so their units do not
        matter.
    n_latent, n_hidden, n_layers, dropout_rate
        Latent dimension, hidden width, hidden layers per network, encoder dropout.
    likelihood
        ``"nb"`` (negative binomial), ``"zinb"`` (zero-inflated NB) or ``"poisson"``. Only without
        ``modalities`` (each :class:`Modality` names its own).
    dispersion
        ``"gene"`` (one inverse dispersion per gene) or ``"gene-batch"`` (per gene and batch).
    seed
        Seeds the weights, the training split and all sampling during training.
    modalities
        Several modalities: name -> :class:`scamort.Modality`. With a MuData the names are its
        modality names and each is read from ``mdata.mod[name]`` (cells absent there are missing that
        modality); with an AnnData each is read from its ``X``, a layer or ``obsm`` (e.g. CITE-seq
        protein in ``obsm["protein_expression"]``). Encoders and decoders are built per modality and
        their posteriors are merged by a product of experts with the prior.
    modality_dropout
        With several modalities: during training, the probability that a cell's posterior uses one
        randomly chosen measured modality only (all are still reconstructed), so that each expert
        alone embeds cells well and imputes the other modalities.
    alignment_weight
        With several modalities: during training, add this weight times the symmetric KL between
        the single-modality posteriors of each cell measured in several modalities (warmed up like
        the KL). It makes the experts agree, so that cells measured in one modality are embedded
        among the paired cells instead of apart from them. 0 turns it off.
    mixing_weight
        With several modalities, for data whose cells were measured in different sets of modalities
        (e.g. paired, RNA-only and protein-only cells): during training, a small classifier learns
        to tell each cell's set of measured modalities from its posterior mean (the embedding), and
        the encoders are penalised by this weight times their loss for fooling it (MULTIVI's
        adversarial mixing). A cell measured in one modality has a posterior mean shrunk towards
        the centre of what that modality cannot tell apart, so without it such cells sit together
        instead of among the paired cells. No effect when every cell has the same modalities, and
        none on the ELBO; 0 turns it off.
    n_private_latent
        With several modalities: latent dimensions private to each modality, besides the
        ``n_latent`` shared ones; an int for every modality or a mapping modality name -> int
        (modalities not named get none). Modality m's decoder reads the shared dimensions and m's private
        ones, whose posterior comes from m's encoder and the prior only (the prior for a cell
        lacking m, and for the modalities left out under modality dropout), so variation that only
        m sees need not occupy the shared space. The embedding
        (:meth:`get_latent_representation`) is the shared part; imputing m for a cell lacking it
        decodes the prior's mean, 0, for m's private dimensions. 0 (default) for none; no effect
        with one modality.

    Notes
    -----
    With several modalities every library-scaled modality (all but ``"bernoulli"``) also gets a
    library-size head: a Gaussian over the cell's log library given the latent of its other
    modalities (read detached, so it changes neither the embedding nor the ELBO). :meth:`impute` and
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
    ) -> None:
        _check_choice(likelihood, RNA_LIKELIHOODS, "likelihood")
        modalities = _modalities(adata, modalities, layer=layer, likelihood=likelihood)
        _check_choice(dispersion, DISPERSIONS, "dispersion")
        for value, name in ((n_latent, "n_latent"), (n_hidden, "n_hidden"), (n_layers, "n_layers")):
            _check_positive_int(value, name)
        _check_positive_int(seed, "seed", minimum=0)
        private = _private_sizes(n_private_latent, modalities)
        for value, name in ((dropout_rate, "dropout_rate"), (modality_dropout, "modality_dropout")):
            if not (is_real_number(value) and 0 <= value < 1):
                raise InputError(f"{name} must be a number in [0, 1), got {value!r}.")
        for value, name in ((alignment_weight, "alignment_weight"), (mixing_weight, "mixing_weight")):
            if not (is_real_number(value, finite=True) and value >= 0):
                raise InputError(f"{name} must be a finite number >= 0, got {value!r}.")
        init_params = {
            "layer": layer,
            "batch_key": batch_key,
            "labels_key": labels_key,
            "categorical_covariate_keys": list(categorical_covariate_keys or []),
            "continuous_covariate_keys": list(continuous_covariate_keys or []),
            "n_latent": int(n_latent),
            "n_hidden": int(n_hidden),
            "n_layers": int(n_layers),
            "dropout_rate": float(dropout_rate),
            "likelihood": likelihood,
            "dispersion": dispersion,
            "seed": int(seed),
            "modalities": {name: asdict(m) for name, m in modalities.items()},
            "modality_dropout": float(modality_dropout),
            "alignment_weight": float(alignment_weight),
            "library_heads": True,
            "n_private_latent": private,
            "mixing_weight": float(mixing_weight),
        }
        if is_backed(adata):  # out of core: counts are validated chunk by chunk in encode_cells
            read = None
            features = {name: list(map(str, adata.var_names)) for name in modalities}
        else:
            read = read_modalities(adata, modalities)
            for name, entry in read.items():
                if not entry.present.any():
                    raise InputError(
                        f"Modality {name!r} has no measured cells, so there is nothing to learn it from; "
                        "drop it from modalities= or add cells that have it."
                    )
            features = {name: read[name].feature_names for name in modalities}
        registry = build_registry(
            {name: (m, features[name]) for name, m in modalities.items()},
            adata,
            batch_key=batch_key,
            labels_key=labels_key,
            categorical_covariate_keys=categorical_covariate_keys,
            continuous_covariate_keys=continuous_covariate_keys,
        )
        self._setup(adata, registry, init_params, read)

    # ------------------------------------------------------------------ construction
    def _setup(
        self,
        adata: ad.AnnData,
        registry: Registry,
        init_params: dict[str, Any],
        read: dict[str, ModalityCounts] | None = None,
    ) -> None:
        self.adata = adata
        self.registry = registry
        self.init_params = init_params
        self._data: CellData | BackedCellData = encode_cells(adata, registry, read)
        n_modalities = len(registry.modalities)
        # Absent from models saved before the option existed: those had none.
        private = init_params.get("n_private_latent", {})
        sizes = tuple(int(private.get(m.name, 0)) for m in registry.modalities)
        private_dims = sizes if n_modalities > 1 and any(sizes) else ()
        config = ModuleConfig(
            modalities=tuple((m.name, m.n_features, m.modality.likelihood) for m in registry.modalities),
            n_latent=init_params["n_latent"] + sum(private_dims),
            n_hidden=init_params["n_hidden"],
            n_layers=init_params["n_layers"],
            dropout_rate=init_params["dropout_rate"],
            dispersion=init_params["dispersion"],
            modality_dropout=init_params["modality_dropout"],
            n_batch=registry.n_batch,
            categorical_sizes=registry.categorical_sizes(),
            n_continuous=len(registry.continuous_covariate_keys),
            # Absent from models saved before these options existed: those had neither.
            alignment_weight=init_params.get("alignment_weight", 0.0),
            library_heads=init_params.get("library_heads", False),
            private_dims=private_dims,
            mixing_weight=init_params.get("mixing_weight", 0.0),
        )
        torch.manual_seed(init_params["seed"])
        self.module = VAE(config)
        self._initialize_from_data()
        self.history: pd.DataFrame | None = None
        self.train_indices: np.ndarray | None = None
        self.validation_indices: np.ndarray | None = None
        self.is_trained = False

    def _initialize_from_data(self, max_cells: int = 10_000) -> None:
        """Data-driven starting values (overwritten when loading weights): the library-size heads' mean
        and variance, and the background rates of ``"nbmixture"`` decoders (from at most
        ``max_cells`` measured cells)."""
        for name, head in self.module.library_heads.items():
            tensors = self._data.modalities[name]
            head.initialize(tensors.log_library[tensors.present])
        if not isinstance(self._data, CellData):  # out of core: no data-driven start
            return
        for name, decoder in self.module.decoders.items():
            if not isinstance(decoder, NegativeBinomialMixtureDecoder):
                continue
            tensors = self._data.modalities[name]
            rows = torch.as_tensor(np.flatnonzero(tensors.present.numpy())[:max_cells])
            sample = self._data.take(rows)
            counts = sample.modalities[name].rows(0, rows.shape[0]).to_dense()
            library = counts.sum(1, keepdim=True).clamp(min=1)
            decoder.initialize_background((counts + 0.5) / library, sample.batch_index)

    @property
    def n_latent(self) -> int:
        """Latent dimension of the embedding (the shared dimensions; private ones not counted)."""
        return self.module.config.n_shared

    @property
    def device(self) -> torch.device:
        """Where the module's weights are."""
        return next(self.module.parameters()).device

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        train_size: float = 0.9,
        early_stopping: bool = True,
        early_stopping_patience: int = 30,
        device: str = "auto",
        kl_warmup_epochs: int | None = None,
        progress_bar: bool = True,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 1,
        lr_scaling: str = "linear",
        max_seconds: float | None = None,
        pretrain_modality: str | None = None,
    ) -> pd.DataFrame:
        """Fit the model by minibatch stochastic variational inference.

        A second call continues from the current weights as a new run: a fresh optimizer, its own
        KL warm-up and epoch count, and a history that replaces ``self.history``. To resume an
        interrupted run exactly, use ``checkpoint_dir``.

        Parameters
        ----------
        max_epochs
            Passes over the training cells; default ``min(400, max(10, 8e6 / n_cells))``.
        batch_size
            Cells per gradient step.
        lr, weight_decay
            AdamW learning rate (for batches of 128 cells, see ``lr_scaling``) and weight decay.
        train_size
            Fraction of cells trained on; the rest forms the validation split.
        early_stopping, early_stopping_patience
            Stop once the validation ELBO has not improved for this many epochs after warm-up, keeping
            the best weights.
        device
            ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        kl_warmup_epochs
            Epochs of linear KL warm-up to weight 1; default a quarter of ``max_epochs``, at most 25
            (with ``pretrain_modality``, in the first stage only).
        progress_bar
            Show a progress bar.
        checkpoint_dir, checkpoint_every
            Save a checkpoint (weights, optimizer, RNG states, history) every ``checkpoint_every``
            epochs, atomically. Calling ``train`` again with the same options and directory (e.g.
            after the process was killed) resumes from it; on CPU the result is identical to an
            uninterrupted run.

        lr_scaling
            How the learning rate follows the batch size, with ``B`` the global batch (``batch_size``
            times the number of torchrun processes): ``"linear"`` (default) uses ``lr * B / 128``,
            which keeps the held-out ELBO after a given number of epochs at least that of batch 128
            up to ``B = 2048`` on 20k cells (``benchmarks/scale_cpu.py``: -95.7 at 2048 vs -97.0 at
            128 after 10 epochs; on the 4186 worm neurons batches 512 and 1024 end at -139.5 and
            -140.1 vs -139.6 at 128); ``"sqrt"`` uses ``lr * sqrt(B / 128)`` (Adam's square-root
            rule, more cautious: 1-11% lower held-out ELBO than batch 128's at batches 256-4096 in
            the same benchmark); ``"none"`` uses ``lr`` as given. Batch 128 gets ``lr`` under every
            rule.
        max_seconds
            Wall-clock budget: stop after the first epoch that ends past it (with
            ``pretrain_modality``, the budget of each stage).
        pretrain_modality
            With several modalities: first train on this modality alone (every other one masked, as
            for cells not measured in it; cells lacking it sit this stage out), so that it alone
            lays out the latent space; then train on all modalities, with this modality's encoder
            kept as pretrained, so that the other experts learn to place cells in that space. Each
            stage is a run as described above (``max_epochs``, early stopping) on the same
            training/validation split; only the first warms the KL weight up, since the second
            starts from a model trained at KL weight 1 (warming up again from 0 lets the posteriors
            narrow and the other experts' variation into the latent). Use it when one modality
            carries the structure of interest and another adds little to it: on the bundled 500-cell
            multiome data with 600 peaks, the paired RNA + ATAC embedding then clusters cell types
            as well as RNA alone (Leiden ARI / NMI 0.384 / 0.567 vs 0.381 / 0.569, means of twelve
            seeds) instead of clearly worse (0.342 / 0.533 vs 0.382 / 0.571 over six), see
            ``benchmarks/README.md``. Keep the default when the other modality resolves structure of
            its own, as protein does on CITE-seq (paired ARI 0.593 trained jointly, 0.530 with RNA
            first), and for unpaired integration: the short second stage mixes cells measured in one
            modality less (unpaired multiome: ATAC-only cells' own-group share of neighbours 0.69 vs
            0.44). Default None: one run on all modalities.

        Returns
        -------
        The training history (also ``self.history``): per epoch ``kl_weight``, ``train_loss``,
        ``train_elbo``, ``train_reconstruction``, ``train_kl``, ``validation_elbo``,
        ``validation_reconstruction``, ``validation_kl`` (per-cell means; validation NaN when
        ``train_size == 1``) and ``seconds``. With ``pretrain_modality`` both stages, one after the
        other (``epoch`` counting on), and a ``stage`` column: ``"pretrain"`` or ``"all"``.
        """
        max_epochs = default_max_epochs(self._data.n_cells) if max_epochs is None else max_epochs
        _check_choice(lr_scaling, tuple(LR_SCALING_EXPONENTS), "lr_scaling")
        _check_positive_int(checkpoint_every, "checkpoint_every")
        as_given = TrainConfig(  # checks the options as the user gave them, before any is derived
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            max_seconds=max_seconds,
            weight_decay=weight_decay,
            train_size=train_size,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            kl_warmup_epochs=0 if kl_warmup_epochs is None else kl_warmup_epochs,
            seed=self.init_params["seed"],
        )
        # by the global batch: under torchrun each process takes batch_size
        global_batch = batch_size * int(os.environ.get("WORLD_SIZE", "1"))
        config = replace(
            as_given,
            lr=lr * (global_batch / 128) ** LR_SCALING_EXPONENTS[lr_scaling],
            kl_warmup_epochs=(
                default_kl_warmup_epochs(max_epochs) if kl_warmup_epochs is None else kl_warmup_epochs
            ),
        )
        names = self.registry.modality_names
        if pretrain_modality is not None:
            if len(names) < 2:
                raise InputError(
                    "pretrain_modality needs a model of several modalities; this one has only "
                    f"{names[0]!r}, so train it without pretrain_modality."
                )
            _check_choice(pretrain_modality, names, "pretrain_modality")
        run = partial(
            fit,
            self.module,
            self._data,
            device=resolve_device(device),
            progress_bar=progress_bar,
            checkpoint_every=checkpoint_every,
        )
        if pretrain_modality is None:
            result = run(config, checkpoint_dir=checkpoint_dir)
            history = result.history
        else:
            first_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / PRETRAIN_FOLDER
            second = replace(config, kl_warmup_epochs=0)
            if checkpoint_dir is not None:  # the first stage's own is checked as it starts
                load_checkpoint(checkpoint_dir, second, run_fingerprint(self.module, self._data))
            pretraining = run(config, checkpoint_dir=first_dir, modalities=(pretrain_modality,))
            with frozen(self.module.encoders[pretrain_modality]):
                result = run(second, checkpoint_dir=checkpoint_dir)
            history = pd.concat(
                [pretraining.history.assign(stage="pretrain"), result.history.assign(stage="all")],
                ignore_index=True,
            )
            history["epoch"] = np.arange(1, len(history) + 1)
        self.history = history
        self.train_indices = result.train_indices
        self.validation_indices = result.validation_indices
        self.is_trained = True
        return self.history

    # ------------------------------------------------------------------ data access
    def _cells(
        self, adata: ad.AnnData | None, indices: Sequence[int] | np.ndarray | None
    ) -> tuple[CellData, np.ndarray, pd.Index]:
        """Tensors on the model's device, the positions to use, and their obs names."""
        if adata is not None and not isinstance(adata, ad.AnnData) and not is_mudata(adata):
            raise InputError(f"Expected an AnnData or MuData, got {type(adata).__name__}.")
        source = self.adata if adata is None else adata
        index = np.arange(source.n_obs) if indices is None else _positions(indices, source.n_obs)
        data = self._data if adata is None else encode_cells(adata, self.registry)
        return data.to(self.device), index, source.obs_names[index]

    def _posteriors(
        self, data: CellData, index: np.ndarray, refine_steps: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The ``posteriors=`` of :mod:`scamort.inference`: None (encoders') or refined ones."""
        _check_positive_int(refine_steps, "refine_steps", minimum=0)
        return maybe_refine(self.module, data, index, int(refine_steps))

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
        """Refine each cell's posterior by gradient steps on its own ELBO (semi-amortized inference).

        Starts from the encoders' q(z|x) and takes ``n_steps`` Adam steps per cell on that cell's
        ELBO (KL weight 1), all cells of a minibatch at once, with encoders and decoders frozen
        (their weights never change). This closes the *amortization gap* of one shared encoder,
        most for cells unlike the training data. The same refinement is available everywhere a
        posterior is used through ``refine_steps=`` (latent, ELBO, marginal LL, expression).

        Parameters
        ----------
        adata, indices
            Cells to refine (default: all training cells).
        n_steps
            Adam steps per cell.
        lr
            Initial Adam learning rate on means and log-variances (decays by 0.95 per step).
        n_samples
            Reparameterisation samples per cell and step.
        batch_size
            Cells refined together (memory grows with ``batch_size * n_samples``).
        seed
            Seed of the (counter-based, per-cell) noise: a cell is refined the same way alone or
            in any minibatch.
        record_elbo_at
            Steps after which to record each cell's ELBO (0 = the encoders' posterior).

        Returns
        -------
        :class:`scamort.refine.RefinementResult` with ``mean`` and ``log_variance``
        ``(n_cells, n_latent)`` (with ``n_private_latent``: the whole latent vector, the shared
        dimensions first, then each modality's private ones), the recorded ``elbo``
        ``(n_cells, n_recorded)`` and ``seconds``.
        """
        for value, name in ((n_steps, "n_steps"), (n_samples, "n_samples"), (batch_size, "batch_size")):
            _check_positive_int(value, name, minimum=0 if name == "n_steps" else 1)
        data, index, _ = self._cells(adata, indices)
        try:
            return refine_posteriors(
                self.module,
                data,
                index,
                n_steps=int(n_steps),
                lr=lr,
                n_samples=int(n_samples),
                batch_size=int(batch_size),
                seed=seed,
                record_elbo_at=record_elbo_at,
            )
        except ValueError as error:
            raise InputError(str(error)) from None

    def amortization_gap(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        steps: Sequence[int] = (5, 20, 50),
        n_optimum_steps: int = 200,
    ) -> AmortizationGap:
        """Measure each cell's amortization gap: how far the encoder's posterior is from the best one.

        For every cell: the encoder's ELBO, the refined ELBO after each of ``steps`` (a curve), and a
        near-optimum from ``n_optimum_steps`` of per-cell optimisation. ``gap = optimum - encoder``
        and ``closure(k) = (refined_k - encoder) / gap``. A large gap flags cells the encoder serves
        badly (cells unlike the training data, rare types): a QC signal.

        Parameters
        ----------
        adata
            Cells to use (default: the training data); any AnnData/MuData with the model's features.
        indices
            Positions of cells within ``adata`` (default all).
        steps
            Refinement steps at which to record each cell's ELBO (the curve).
        n_optimum_steps
            Steps of the long per-cell optimisation giving the near-optimum.
        Returns
        -------
        :class:`scamort.amortization_gap.AmortizationGap`: ``gap`` ``(n_cells,)``, ``closure``
        ``(n_steps,)``, ``to_frame()`` (per-cell table), ``summary()``; plot it with
        :func:`scamort.pl.amortization_gap`, store it in ``.obs`` with :func:`scamort.tl.amortization_gap`.
        """
        _check_positive_int(n_optimum_steps, "n_optimum_steps")
        given = tuple(steps) if isinstance(steps, tuple | list) else steps
        options = GapOptions(steps=given, n_optimum_steps=int(n_optimum_steps))  # checked before any work
        data, index, _ = self._cells(adata, indices)
        return measure_amortization_gap(self.module, data, index, options)

    def _modality_name(self, modality: str | None) -> str:
        return self.registry.modalities[0].name if modality is None else self.registry.modality(modality).name

    # ------------------------------------------------------------------ queries
    def get_latent_representation(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        give_mean: bool = True,
        modality: str | None = None,
        refine_steps: int = 0,
    ) -> np.ndarray:
        """Posterior of the latent per cell.

        Parameters
        ----------
        adata
            Cells to embed (default: the training AnnData); any AnnData with the model's genes.
        indices
            Positions of cells within ``adata`` (default all).
        give_mean
            Posterior mean (default) or one sample.
        modality
            Use only this modality's expert (with the prior); default the joint posterior.
        refine_steps
            Refine each cell's posterior by this many gradient steps on its own ELBO first
            (see :meth:`refine`); 0 uses the encoders' posterior.

        Returns
        -------
        Array of shape ``(n_cells, n_latent)``.
        """
        data, index, _ = self._cells(adata, indices)
        modalities = None if modality is None else (self._modality_name(modality),)
        if modalities is not None and refine_steps:
            raise InputError("refine_steps refines the joint posterior; use it without modality=.")
        mean, _ = inference.latent(
            self.module,
            data,
            index,
            give_mean=give_mean,
            modalities=modalities,
            posteriors=self._posteriors(data, index, refine_steps),
        )
        return mean[:, : self.n_latent]

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
        """Denoised expression: ``library_size ×`` the decoder's expression proportions.

        Parameters
        ----------
        adata
            Cells to use (default: the training data); any AnnData/MuData with the model's features.
        indices
            Positions of cells within ``adata`` (default all).
        transform_batch
            Decode every cell as if it came from this batch (batch-corrected expression).
        library_size
            Counts per cell of the output (``1e4``: counts per 10k), or ``"latent"``: each cell's
            library size predicted by the modality's library-size head from the latent of its other
            modalities (:meth:`predict_library_size`; models with several modalities), which gives
            expected counts also for cells lacking the modality.
        n_samples
            Average over this many posterior samples (1: use the posterior mean).
        modality
            Which modality to decode (default the first, e.g. RNA).
        refine_steps
            Refine each cell's posterior by this many gradient steps on its own ELBO first
            (see :meth:`refine`); 0 uses the encoders' posterior.
        include_background
            For an ``"nbmixture"`` modality: the mixture's mean (True) or only its foreground part,
            ``(1 - P(background)) × foreground mean`` (False, totalVI's denoised protein). Other
            likelihoods ignore it.

        Returns
        -------
        DataFrame cells × features (index: obs names, columns: feature names). For ``"nbmixture"``
        rows sum to about (not exactly) ``library_size``; for ``"bernoulli"`` the values are
        probabilities times ``library_size`` and for ``"bernoulli_depth"`` Poisson rates per unit depth
        times ``library_size``.
        """
        _check_positive_int(n_samples, "n_samples")
        latent_library = isinstance(library_size, str)
        if (latent_library and library_size != "latent") or not (
            latent_library or (is_real_number(library_size, finite=True) and library_size > 0)
        ):
            raise InputError(f"library_size must be a positive number or 'latent', got {library_size!r}.")
        name = self._modality_name(modality)
        if latent_library:
            self._require_library_head(name)
        data, index, names = self._cells(adata, indices)
        batch_code = None
        if transform_batch is not None:
            if self.registry.batch_key is None:
                raise InputError("transform_batch needs a model trained with batch_key.")
            categories = self.registry.batch_categories
            if str(transform_batch) not in categories:
                raise InputError(
                    f"transform_batch={transform_batch!r} is not a batch of this model "
                    f"({', '.join(categories)})."
                )
            batch_code = categories.index(str(transform_batch))
        values = self._proportions(data, index, name, batch_code, n_samples, refine_steps, include_background)
        scale = self._predicted_library(data, index, name) if latent_library else library_size
        return self._feature_frame(values * np.reshape(scale, (-1, 1)), names, name)

    def _proportions(
        self,
        data: CellData,
        index: np.ndarray,
        name: str,
        batch_code: int | None,
        n_samples: int,
        refine_steps: int,
        include_background: bool,
    ) -> np.ndarray:
        """The decoder's expression proportions of modality ``name`` for already encoded cells,
        ``(n_cells, n_features)`` (see :meth:`get_normalized_expression`)."""
        return inference.normalized_expression(
            self.module,
            data,
            index,
            modality=name,
            transform_batch=batch_code,
            n_samples=n_samples,
            posteriors=self._posteriors(data, index, refine_steps),
            include_background=include_background,
        )

    def _feature_frame(self, values: np.ndarray, names: pd.Index, modality: str) -> pd.DataFrame:
        """``values`` ``(n_cells, n_features)`` as a DataFrame: cell names × ``modality``'s features."""
        return pd.DataFrame(values, index=names, columns=list(self.registry.modality(modality).feature_names))

    def _require_library_head(self, name: str) -> None:
        """Refuse modality ``name`` when it has no library-size head."""
        if name not in self.module.library_heads:
            raise InputError(
                f"Modality {name!r} has no library-size head: only models with several modalities "
                "(saved by scamort >= 0.2) have one for each library-scaled modality."
            )

    def _predicted_library(self, data: CellData, index: np.ndarray, name: str) -> np.ndarray:
        """Expected library size ``E[l] = exp(mean + variance / 2)`` of ``name`` from the head, ``(n,)``."""
        self._require_library_head(name)
        mean, variance = inference.library_size(self.module, data, index, modality=name)
        return np.exp(mean + variance / 2)

    def predict_library_size(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        modality: str | None = None,
    ) -> np.ndarray:
        """Each cell's library size of ``modality``, predicted from its other modalities.

        The modality's library-size head reads the posterior mean of the cell's *other* modalities
        (what is known about a cell lacking ``modality``; the prior's mean for a cell with no other)
        and gives a log-normal; this returns its expected value, ``exp(mean + variance / 2)``. It is
        trained on the cells measured in ``modality`` and another modality, from the same input.

        Parameters
        ----------
        adata
            Cells to use (default: the training data); any AnnData/MuData with the model's features.
        indices
            Positions of cells within ``adata`` (default all).
        modality
            A library-scaled modality of a model with several modalities (default the first).

        Returns
        -------
        Array ``(n_cells,)``.
        """
        data, index, _ = self._cells(adata, indices)
        return self._predicted_library(data, index, self._modality_name(modality))

    def impute(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        modality: str | None = None,
        n_samples: int = 1,
        include_background: bool = True,
    ) -> pd.DataFrame:
        """Expected counts of ``modality`` for every cell, including cells never measured in it.

        The posterior uses each cell's measured modalities only, so for a cell without ``modality`` the
        prediction comes from the others (e.g. protein from RNA). Cells that have the modality keep
        their own library size; the others get the library size predicted from their latent by the
        modality's library-size head (:meth:`predict_library_size`; models saved before the head
        existed use the median library of the cells that have the modality).

        Parameters
        ----------
        adata
            Cells to use (default: the training data); any AnnData/MuData with the model's features.
        indices
            Positions of cells within ``adata`` (default all).
        modality
            The modality to predict (default the first).
        n_samples
            Average over this many posterior samples (1: use the posterior mean).
        include_background
            For an ``"nbmixture"`` modality: expected counts with the background (True, the mixture's
            mean) or the foreground part only (False). Other likelihoods ignore it.

        Returns
        -------
        DataFrame cells × features of ``modality``: expected counts, or for ``"bernoulli"`` and
        ``"bernoulli_depth"`` the probability of a 1 (for ``"bernoulli_depth"`` at the cell's depth,
        predicted where it lacks the modality).
        """
        _check_positive_int(n_samples, "n_samples")
        data, index, names = self._cells(adata, indices)
        name = self._modality_name(modality)
        proportions = self._proportions(data, index, name, None, n_samples, 0, include_background)
        likelihood = self.registry.modality(name).modality.likelihood
        if likelihood == "bernoulli":  # probabilities; float64 like the expected counts below
            return self._feature_frame(proportions.astype(np.float64), names, name)
        expected = proportions * self._library_sizes(data, index, name)[:, None]
        if likelihood == "bernoulli_depth":
            expected = -np.expm1(-expected)
        return self._feature_frame(expected, names, name)

    def _library_sizes(self, data: CellData, index: np.ndarray, name: str) -> np.ndarray:
        """Library size of modality ``name`` per cell ``(len(index),)`` float64: the cell's own where it
        has the modality, else predicted by the library-size head (or the measured cells' median)."""
        tensors = data.modalities[name]
        measured = tensors.present.cpu().numpy()
        all_libraries = np.exp(tensors.log_library.cpu().numpy())
        present = measured[index]
        if name in self.module.library_heads:
            missing = np.zeros(index.size) if present.all() else self._predicted_library(data, index, name)
        else:
            missing = np.median(all_libraries[measured])
        return np.where(present, all_libraries[index], missing).astype(np.float64)

    def get_elbo(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        return_mean: bool = True,
        refine_steps: int = 0,
    ) -> float | np.ndarray:
        """Evidence lower bound per cell (a log-density: negative for counts, higher is better).

        One reparameterised sample per cell, KL weight 1. Returns the mean over cells, or one value per
        cell (shape ``(n_cells,)``) with ``return_mean=False``. ``refine_steps`` evaluates the ELBO of
        refined posteriors (see :meth:`refine`).

        Parameters
        ----------
        adata
            Cells to use (default: the training data); any AnnData/MuData with the model's features.
        indices
            Positions of cells within ``adata`` (default all).
        return_mean
            Return the mean over cells instead of one value per cell.
        refine_steps
            Refine each cell's posterior by this many gradient steps on its own ELBO first
            (see :meth:`refine`); 0 uses the encoders' posterior.
        """
        data, index, _ = self._cells(adata, indices)
        reconstruction, kl = inference.elbo_terms(
            self.module, data, index, posteriors=self._posteriors(data, index, refine_steps)
        )
        elbo = sum(reconstruction.values()) - kl
        return float(elbo.mean()) if return_mean else elbo

    def get_reconstruction_error(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        return_mean: bool = True,
    ) -> dict[str, float | np.ndarray]:
        """Expected reconstruction log-likelihood ``E_q log p(x_m | z)`` per modality.

        Parameters
        ----------
        adata
            Cells to use (default: the training data); any AnnData/MuData with the model's features.
        indices
            Positions of cells within ``adata`` (default all).
        return_mean
            Return means over cells instead of per-cell arrays.
        Returns
        -------
        Modality name -> mean over cells (or per-cell array ``(n_cells,)`` with ``return_mean=False``).
        """
        data, index, _ = self._cells(adata, indices)
        reconstruction, _ = inference.elbo_terms(self.module, data, index)
        return {k: float(v.mean()) if return_mean else v for k, v in reconstruction.items()}

    def get_marginal_ll(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        n_mc_samples: int = 1000,
        return_mean: bool = True,
        refine_steps: int = 0,
    ) -> float | np.ndarray:
        """Importance-sampled marginal log-likelihood ``log p(x)`` per cell (q as the proposal).

        Returns the mean over cells, or ``(n_cells,)`` with ``return_mean=False``. ``refine_steps``
        uses refined posteriors as the proposal (see :meth:`refine`): a better proposal gives a
        tighter estimate with the same number of samples.

        Parameters
        ----------
        adata
            Cells to use (default: the training data); any AnnData/MuData with the model's features.
        indices
            Positions of cells within ``adata`` (default all).
        n_mc_samples
            Importance samples per cell (processed in chunks, so memory stays bounded).
        return_mean
            Return the mean over cells instead of one value per cell.
        refine_steps
            Refine each cell's posterior by this many gradient steps on its own ELBO first
            (see :meth:`refine`); 0 uses the encoders' posterior.
        """
        _check_positive_int(n_mc_samples, "n_mc_samples")
        data, index, _ = self._cells(adata, indices)
        values = inference.marginal_log_likelihood(
            self.module,
            data,
            index,
            n_mc_samples=n_mc_samples,
            posteriors=self._posteriors(data, index, refine_steps),
        )
        return float(values.mean()) if return_mean else values

    def posterior_predictive_sample(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        n_samples: int = 1,
        modality: str | None = None,
    ) -> np.ndarray:
        """Counts drawn from the posterior predictive: z ~ q(z|x), x' ~ p(x|z).

        Parameters
        ----------
        adata
            Cells to use (default: the training data); any AnnData/MuData with the model's features.
        indices
            Positions of cells within ``adata`` (default all).
        n_samples
            Draws per cell.
        modality
            Which modality to sample (default the first). Cells that lack it are sampled at the library
            size :meth:`impute` uses for them (predicted from their other modalities).

        Returns
        -------
        Array of shape ``(n_samples, n_cells, n_features)``.
        """
        _check_positive_int(n_samples, "n_samples")
        data, index, _ = self._cells(adata, indices)
        name = self._modality_name(modality)
        return inference.posterior_predictive(
            self.module,
            data,
            index,
            modality=name,
            n_samples=n_samples,
            log_library=np.log(self._library_sizes(data, index, name)),
        )

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
        """Bayesian differential expression between two groups of cells (``group2=None``: the rest).

        Posterior-sampled log fold changes, the probability of a change beyond ``delta`` (``mode=
        "change"``) or of higher expression (``"vanilla"``), Bayes factors and posterior expected FDR
        control; sorted by evidence. See :func:`scamort.differential.differential_expression` for the
        other ``options`` (``modality``, ``n_samples``, ``fdr_target``, ``seed``) and the columns.

        Parameters
        ----------
        adata
            Cells to use (default: the training data); any AnnData/MuData with the model's features.
        groupby
            ``.obs`` column defining the groups.
        group1, group2
            The groups compared (``group2=None``: all other cells).
        mode
            ``"change"`` (probability of ``|LFC| > delta``) or ``"vanilla"`` (probability of higher
            expression).
        delta
            Smallest absolute log fold change that counts as a change.
        batch_correction
            Average the expression over the model's batches (decoding each cell in every batch).
        **options
            Passed on: ``modality``, ``n_samples``, ``pseudocount``, ``fdr_target``, ``seed``.
        Returns
        -------
        DataFrame indexed by feature.
        """
        from scamort.differential import differential_expression

        if groupby is None or group1 is None:
            raise InputError("differential_expression needs groupby= (an .obs column) and group1=.")
        return differential_expression(
            self,
            adata,
            groupby=groupby,
            group1=group1,
            group2=group2,
            mode=mode,
            delta=delta,
            batch_correction=batch_correction,
            **options,
        )

    # ------------------------------------------------------------------ persistence
    def save(self, dir_path: str | Path, overwrite: bool = False) -> None:
        """Write the model to ``dir_path`` (JSON spec + weights), atomically.

        Parameters
        ----------
        dir_path
            Folder to write (created; its parent must be writable).
        overwrite
            Replace an existing saved model (or fill an empty folder); a file or a folder of other
            files is never replaced. The previous model stays in place until the new one is complete.

        Raises
        ------
        FileExistsError
            If ``dir_path`` exists and ``overwrite`` is False, or it is not a saved model.
        """
        io.save(
            dir_path,
            overwrite=overwrite,
            init_params=self.init_params,
            registry=self.registry.to_dict(),
            state_dict=self.module.state_dict(),
            history=self.history,
            split={
                "train_indices": self.train_indices,
                "validation_indices": self.validation_indices,
            },
            is_trained=self.is_trained,
        )

    @classmethod
    def load(cls, dir_path: str | Path, adata: ad.AnnData, device: str = "auto") -> Model:
        """Load a saved model onto ``adata`` (genes aligned by name; categories must be known).

        Parameters
        ----------
        dir_path
            A folder written by :meth:`save`.
        adata
            The data to attach: its features must include the model's (they are aligned by name) and
            its categorical columns may only hold categories the model knows.
        device
            Where to place the weights (``"auto"``: CUDA when available).

        Returns
        -------
        Model
            The loaded model, attached to ``adata``.

        Raises
        ------
        InputError
            If ``adata`` is not an AnnData/MuData, lacks the model's genes or has unseen categories;
            if the save format is incompatible; or if the weights are damaged or do not fit.
        FileNotFoundError
            If ``dir_path`` holds no ``model.json`` or no ``weights.pt``.
        """
        if not (is_mudata(adata) or isinstance(adata, ad.AnnData)):
            raise InputError(
                f"Model.load attaches the model to an AnnData or MuData (read the file first, e.g. "
                f"anndata.read_h5ad); got {type(adata).__name__}."
            )
        target_device = resolve_device(device)
        saved = io.load(dir_path)
        model = cls.__new__(cls)
        model._setup(adata, Registry.from_dict(saved.registry), saved.init_params)
        try:
            model.module.load_state_dict(saved.state_dict)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise InputError(
                f"The weights in {dir_path} do not fit the model its model.json describes ({detail}); "
                "the folder mixes files of different models: save the model again."
            ) from None
        model.module.to(target_device).eval()
        model.history = saved.history
        model.train_indices = saved.split.get("train_indices")
        model.validation_indices = saved.split.get("validation_indices")
        model.is_trained = saved.is_trained
        return model

    def __repr__(self) -> str:
        modalities = ", ".join(
            f"{m.name}: {m.n_features} features, {m.modality.likelihood}" for m in self.registry.modalities
        )
        state = (
            f"trained {len(self.history)} epochs"
            if self.is_trained and self.history is not None
            else ("trained" if self.is_trained else "not trained")
        )
        batches = (
            f", {self.registry.n_batch} batches ({self.registry.batch_key!r})"
            if self.registry.batch_key
            else ""
        )
        return (
            f"scamort.Model({self._data.n_cells} cells; {modalities}{batches}; "
            f"n_latent={self.n_latent}; {state})"
        )
