"""The scvi-tools side of ``benchmarks/mapping.py``: scArches with SCANVI, and TOTALVI for design (a).

SCANVI (the scArches tutorial's protocol): ``SCVI`` on the reference, ``SCANVI.from_scvi_model(...,
unlabeled_category="Unknown")`` trained 20 epochs, then ``SCANVI.prepare_query_anndata``,
``SCANVI.load_query_data`` and the query trained with ``plan_kwargs={"weight_decay": 0.0}``; labels and
probabilities from ``predict(soft=True)``, novelty ``1 - max probability``.

TOTALVI (scvi-tools' reference-mapping tutorial): ``TOTALVI`` on the reference RNA + protein, the RNA-only
query given all-zero protein, ``TOTALVI.load_query_data`` and the query trained with
``plan_kwargs={"weight_decay": 0.0, "scale_adversarial_loss": 0.0}``. TOTALVI has no classifier: its labels
are the shares of the reference labels among each query cell's 15 nearest reference cells in its latent
(:func:`_mapping_metrics.knn_probabilities`). Imputed protein: ``get_normalized_expression`` of the query
(25 samples), in the query's own batch and transformed to the reference batch, each with and without the
protein background.

Mapping time: ``prepare_query_anndata`` / ``load_query_data`` + query training + prediction (for TOTALVI:
the query latent and the kNN vote); reference training is timed separately.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _common import quiet_scvi, timed
from _mapping_data import BATCH, LABEL, PROTEIN, REFERENCE_BATCH, Design
from _mapping_metrics import knn_probabilities, label_scores, mixing
from _multimodal_metrics import pearson_summary

UNKNOWN = "Unknown"
SCANVI_EPOCHS = 20
#: The folder keeping trained reference models between runs (``--reference-cache``); empty: no cache.
REFERENCE_CACHE: list[Path] = []


@dataclass(frozen=True)
class Budget:
    """Epochs of one protocol; ``None`` is the tool's own default.

    Attributes
    ----------
    reference_epochs
        Epochs of the whole reference training (for SCANVI: SCVI epochs + :data:`SCANVI_EPOCHS`).
    query_epochs
        Epochs of the query training.
    """

    reference_epochs: int | None
    query_epochs: int | None


def cached_reference(
    key: str, load: Callable[[Path], Any], train: Callable[[], Any]
) -> tuple[Any, dict[str, Any]]:
    """The reference model ``train()`` returns, or the one saved under ``key`` in the cache.

    ``train`` returns ``(model, meta)``: ``meta`` (training seconds, epochs) is saved beside the model and
    returned with it, so a cached reference reports the training it had. Mapping times never include
    the reference, so a cached reference changes no reported time.
    """
    folder = REFERENCE_CACHE[0] / key if REFERENCE_CACHE else None
    if folder is not None and (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text())
        return load(folder), {**meta, "reference_from_cache": True}
    model, meta = train()
    if folder is not None:
        model.save(folder, overwrite=True)
        (folder / "meta.json").write_text(json.dumps(meta))
    return model, meta


def _scvi_epochs(budget: Budget) -> int | None:
    if budget.reference_epochs is None:
        return None
    return max(budget.reference_epochs - SCANVI_EPOCHS, 1)


def _scanvi_epochs(budget: Budget) -> int:
    return min(SCANVI_EPOCHS, budget.reference_epochs or SCANVI_EPOCHS)


def run_scanvi(design: Design, budget: Budget, seed: int) -> dict[str, Any]:
    """SCVI -> SCANVI -> load_query_data -> query training -> predict(soft=True), scored."""
    scvi = quiet_scvi(seed)
    ref = design.reference.copy()
    query = design.query.copy()
    ref.obs["scanvi_label"] = ref.obs[LABEL].astype(str)
    query.obs["scanvi_label"] = UNKNOWN
    del query.obs[LABEL]
    scvi.model.SCVI.setup_anndata(ref, batch_key=BATCH, labels_key="scanvi_label")

    def train() -> tuple[Any, dict[str, Any]]:
        with timed() as reference_watch:
            vae = scvi.model.SCVI(ref)
            vae.train(max_epochs=_scvi_epochs(budget), enable_progress_bar=False)
            lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=UNKNOWN)
            lvae.train(max_epochs=_scanvi_epochs(budget), enable_progress_bar=False)
        epochs = {"scvi": len(vae.history["elbo_train"]), "scanvi": len(lvae.history["elbo_train"])}
        return lvae, {"reference_seconds": reference_watch.seconds, "epochs": epochs}

    key = f"scanvi_{design.name}_ref{budget.reference_epochs}_seed{seed}"
    lvae, meta = cached_reference(key, lambda f: scvi.model.SCANVI.load(str(f), adata=ref), train)
    query_epochs = 100 if budget.query_epochs is None else budget.query_epochs
    with timed() as map_watch:
        scvi.model.SCANVI.prepare_query_anndata(query, lvae)
        mapped = scvi.model.SCANVI.load_query_data(query, lvae)
        mapped.train(max_epochs=query_epochs, plan_kwargs={"weight_decay": 0.0}, enable_progress_bar=False)
        soft = mapped.predict(soft=True)
    soft = soft.drop(columns=[c for c in soft.columns if str(c) == UNKNOWN])
    out: dict[str, Any] = {**meta, "map_seconds": map_watch.seconds}
    out["epochs"] = {**meta["epochs"], "query": len(mapped.history["elbo_train"])}
    out.update(label_scores(soft, design.query.obs[LABEL].to_numpy(), design.known()))
    out["mixing"] = mixing(lvae.get_latent_representation(), mapped.get_latent_representation())
    return out


def run_totalvi(design: Design, budget: Budget, seed: int) -> dict[str, Any]:
    """TOTALVI on the RNA + protein reference, the RNA-only query mapped with load_query_data."""
    scvi = quiet_scvi(seed)
    if design.query_protein is None:
        raise ValueError("TOTALVI needs a design with protein (bmmc)")
    ref = design.reference.copy()
    query = design.query.copy()
    del query.obs[LABEL]
    columns = ref.obsm[PROTEIN].columns
    query.obsm[PROTEIN] = pd.DataFrame(0.0, index=query.obs_names, columns=columns)
    scvi.model.TOTALVI.setup_anndata(ref, batch_key=BATCH, protein_expression_obsm_key=PROTEIN)

    def train() -> tuple[Any, dict[str, Any]]:
        with timed() as reference_watch:
            model = scvi.model.TOTALVI(ref)
            model.train(max_epochs=budget.reference_epochs, enable_progress_bar=False)
        epochs = {"reference": len(model.history["elbo_train"])}
        return model, {"reference_seconds": reference_watch.seconds, "epochs": epochs}

    key = f"totalvi_{design.name}_ref{budget.reference_epochs}_seed{seed}"
    model, meta = cached_reference(key, lambda f: scvi.model.TOTALVI.load(str(f), adata=ref), train)
    reference_latent = model.get_latent_representation()
    query_epochs = 200 if budget.query_epochs is None else budget.query_epochs
    with timed() as map_watch:
        mapped = scvi.model.TOTALVI.load_query_data(query, model)
        mapped.train(
            max_epochs=query_epochs,
            plan_kwargs={"weight_decay": 0.0, "scale_adversarial_loss": 0.0},
            enable_progress_bar=False,
        )
        query_latent = mapped.get_latent_representation()
        soft = knn_probabilities(reference_latent, ref.obs[LABEL].to_numpy(), query_latent)
    out: dict[str, Any] = {
        **meta,
        "map_seconds": map_watch.seconds,
        "epochs": {**meta["epochs"], "query": len(mapped.history["elbo_train"])},
        "labels_from": "15-nearest-reference-neighbour vote in the TOTALVI latent",
    }
    out.update(label_scores(soft, design.query.obs[LABEL].to_numpy(), design.known()))
    out["mixing"] = mixing(reference_latent, query_latent)
    truth = design.query_protein.loc[query.obs_names, columns].to_numpy()
    imputation = {}
    for name, transform in (("own_batch", None), ("transform_reference", [REFERENCE_BATCH["bmmc"]])):
        for background in (False, True):
            _, values = mapped.get_normalized_expression(
                query,
                n_samples=25,
                transform_batch=transform,
                include_protein_background=background,
                return_mean=True,
                return_numpy=True,
            )
            key = f"{name}_{'with_background' if background else 'foreground'}"
            imputation[key] = pearson_summary(np.asarray(values), truth)
    out["imputation"] = imputation
    out["protein_median_r"] = max(v["median_pearson"] for v in imputation.values())
    return out
