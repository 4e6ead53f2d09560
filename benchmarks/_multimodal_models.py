"""The scamort models of ``benchmarks/multimodal.py``: their settings (package defaults unless changed),
the rows of each part (unpaired, ablations, paired, pretrained, RNA-only) and how one is trained."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from _common import timed

import scamort
from scamort.model import DEFAULT_ALIGNMENT_WEIGHT, DEFAULT_MIXING_WEIGHT, DEFAULT_N_PRIVATE_LATENT


@dataclass(frozen=True)
class Settings:
    """How each scamort model is built and trained (the package defaults unless changed).

    Attributes
    ----------
    max_epochs, batch_size, lr
        Training length and optimiser (early stopping on the validation ELBO stays on).
    n_latent, n_hidden
        Latent dimension and hidden width.
    modality_dropout
        Probability that a cell's training posterior uses one random measured expert only.
    alignment_weight
        Weight of the symmetric KL between single-modality posteriors of paired cells.
    mixing_weight
        Weight of the encoders' loss for fooling the classifier of measured-modality groups.
    n_private_latent
        Latent dimensions private to each modality.
    pretrain_modality
        ``Model.train(pretrain_modality=...)`` of the models of several modalities (None: none).
    seed
        Seed of the cell split into groups, of the model and of clustering.
    """

    max_epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    n_latent: int = 10
    n_hidden: int = 128
    modality_dropout: float = 0.3
    alignment_weight: float = DEFAULT_ALIGNMENT_WEIGHT
    mixing_weight: float = DEFAULT_MIXING_WEIGHT
    n_private_latent: int | Mapping[str, int] = DEFAULT_N_PRIVATE_LATENT
    pretrain_modality: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class Row:
    """One scamort model of an integration part.

    Attributes
    ----------
    name
        Row name in the JSON.
    second
        The second modality's spec, or None for an RNA-only model.
    paired
        Train on the fully paired cells instead of the unpaired ones.
    change
        :class:`Settings` fields changed for this row.
    """

    name: str
    second: scamort.Modality | None
    paired: bool = False
    change: Mapping[str, Any] = field(default_factory=dict)


#: The rows that first train on the RNA alone (``Model.train(pretrain_modality="rna")``).
PRETRAIN_RNA: Mapping[str, Any] = {"pretrain_modality": "rna"}


#: ATAC likelihoods compared; the first is the one of the paired and ablation rows and the plot.
ATAC_VARIANTS: dict[str, scamort.Modality] = {
    "bernoulli_depth": scamort.Modality(likelihood="bernoulli_depth", binarize=True),
    "bernoulli": scamort.Modality(likelihood="bernoulli", binarize=True),
    "poisson": scamort.Modality(likelihood="poisson"),
}


#: MULTIVI runs: its own defaults (n_hidden = sqrt(n_regions) = 24, n_latent = sqrt(24) = 4 here) and
#: scamort's sizes.
MULTIVI_ARCHITECTURES: dict[str, dict[str, int]] = {
    "multivi_unpaired_default": {},
    "multivi_unpaired_hidden128_latent10": {"n_hidden": 128, "n_latent": 10},
}


def fit_scamort(
    data: Any, modalities: Mapping[str, scamort.Modality], settings: Settings
) -> tuple[scamort.Model, float]:
    """Build and train one scamort model; returns it and its training seconds."""
    extra = (
        {
            "alignment_weight": settings.alignment_weight,
            "mixing_weight": settings.mixing_weight,
            "n_private_latent": settings.n_private_latent,
        }
        if len(modalities) > 1
        else {}
    )
    model = scamort.Model(
        data,
        modalities=dict(modalities),
        batch_key="batch",
        n_latent=settings.n_latent,
        n_hidden=settings.n_hidden,
        modality_dropout=settings.modality_dropout,
        seed=settings.seed,
        **extra,
    )
    with timed() as watch:
        model.train(
            max_epochs=settings.max_epochs,
            batch_size=settings.batch_size,
            lr=settings.lr,
            progress_bar=False,
            pretrain_modality=settings.pretrain_modality if len(modalities) > 1 else None,
        )
    return model, watch.seconds


def training_record(model: scamort.Model, seconds: float) -> dict[str, Any]:
    """Epochs run, seconds and the last validation ELBO of a trained scamort model."""
    history = model.history
    return {
        "epochs_run": len(history),
        "train_seconds": seconds,
        "best_validation_elbo": float(history["validation_elbo"].max()),
    }


def _ablation(settings: Settings) -> dict[str, Any]:
    """The settings change that turns the alignment term off (nothing when it is off already)."""
    return {"alignment_weight": 0.0} if settings.alignment_weight > 0 else {}


def _mixing_ablation(settings: Settings) -> dict[str, Any]:
    """The settings change that turns adversarial mixing off (nothing when it is off already)."""
    return {"mixing_weight": 0.0} if settings.mixing_weight > 0 else {}


def cite_rows(settings: Settings, full: bool) -> list[Row]:
    """Models of part (a): the unpaired model, and with ``full`` its ablation and the baselines."""
    nb = scamort.Modality(likelihood="nb")
    rows = [Row("unpaired_nb", nb)]
    if full:
        if _ablation(settings):
            rows.append(Row("unpaired_nb_no_alignment", nb, change=_ablation(settings)))
        if _mixing_ablation(settings):
            rows.append(Row("unpaired_nb_no_mixing", nb, change=_mixing_ablation(settings)))
        rows += [
            Row("unpaired_nb_pretrain_rna", nb, change=PRETRAIN_RNA),
            Row("paired_nb", nb, paired=True),
            Row("paired_nb_pretrain_rna", nb, paired=True, change=PRETRAIN_RNA),
            Row("rna_only_model", None),
        ]
    return rows


def multiome_rows(settings: Settings, full: bool) -> list[Row]:
    """Models of part (b): unpaired per ATAC likelihood; with ``full`` ablation, paired and RNA-only."""
    first, spec = next(iter(ATAC_VARIANTS.items()))
    if not full:
        return [Row(f"unpaired_{first}", spec)]
    rows = [Row(f"unpaired_{name}", variant) for name, variant in ATAC_VARIANTS.items()]
    rows.append(Row(f"unpaired_{first}_pretrain_rna", spec, change=PRETRAIN_RNA))
    if _ablation(settings):
        rows.append(Row(f"unpaired_{first}_no_alignment", spec, change=_ablation(settings)))
    if _mixing_ablation(settings):
        rows.append(Row(f"unpaired_{first}_no_mixing", spec, change=_mixing_ablation(settings)))
    rows += [
        Row(f"paired_{name}", ATAC_VARIANTS[name], paired=True) for name in ("bernoulli_depth", "bernoulli")
    ]
    rows.append(
        Row(f"paired_{first}_private_atac_5", spec, paired=True, change={"n_private_latent": {"atac": 5}})
    )
    rows.append(Row(f"paired_{first}_pretrain_rna", spec, paired=True, change=PRETRAIN_RNA))
    rows.append(Row("rna_only_model", None))
    return rows
