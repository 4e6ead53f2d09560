"""The scamort side of ``benchmarks/mapping.py``: ``Model.load_query_data`` and label transfer.

Reference: ``scamort.Model(reference, batch_key="batch", labels_key="label")`` (for ``bmmc`` with an RNA
and a protein modality, the protein an NB mixture from ``.obsm``), ``train()``. Query: the query's cells
without their labels (RNA only), ``scamort.Model.load_query_data(query, reference)``,
``query_model.train()`` (its mapping defaults), ``predict(soft=True)``; confidence = the largest
(temperature-scaled) probability, novelty = ``query_model.novelty()`` (the probability of a type absent
from the reference, from the distance to the labels' Gaussians). Mixing on the reference model's
latent mean of the reference cells and the query model's of the query cells. For ``bmmc`` the query's
protein from ``query_model.impute(modality="prot")``.

``scamort_refined`` is the same query model after ``refine()`` of the query cells (20 steps): its mixing
on the refined posterior means and its labels from the label classifier on them; ``map_seconds``
includes the refinement.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from _common import timed
from _mapping_data import BATCH, LABEL, PROTEIN, Design
from _mapping_metrics import label_scores, mixing
from _mapping_scvi import Budget, cached_reference
from _multimodal_metrics import pearson_summary

import scamort

PROT = "prot"


def _reference(design: Design, budget: Budget, seed: int) -> tuple[scamort.Model, dict[str, Any]]:
    """The trained reference model and ``{"reference_seconds", "reference_epochs"}`` (from the cache
    when ``--reference-cache`` holds it)."""
    modalities = None
    if PROTEIN in design.reference.obsm:
        modalities = {
            "rna": scamort.Modality(),
            PROT: scamort.Modality(obsm_key=PROTEIN, likelihood="nbmixture"),
        }
    kwargs: dict[str, Any] = {}
    if budget.reference_epochs is not None:
        kwargs = {"max_epochs": budget.reference_epochs, "early_stopping": False}
    data = design.reference.copy()

    def train() -> tuple[scamort.Model, dict[str, Any]]:
        with timed() as watch:
            model = scamort.Model(data, modalities=modalities, batch_key=BATCH, labels_key=LABEL, seed=seed)
            model.train(progress_bar=False, **kwargs)
        return model, {"reference_seconds": watch.seconds, "reference_epochs": len(model.history)}

    key = f"scamort_{design.name}_ref{budget.reference_epochs}_seed{seed}"
    return cached_reference(key, lambda folder: scamort.Model.load(folder, data), train)


def _query_cells(design: Design) -> Any:
    query = design.query.copy()
    del query.obs[LABEL]
    return query


def _train_query(query_model: scamort.Model, budget: Budget) -> None:
    kwargs: dict[str, Any] = {}
    if budget.query_epochs is not None:
        kwargs = {"max_epochs": budget.query_epochs, "early_stopping": False}
    query_model.train(progress_bar=False, **kwargs)


def _refined_probabilities(query_model: scamort.Model, mean: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """The label classifier's calibrated probabilities and novelty scores of refined posterior means
    ``(n, n_latent)``."""
    classifier = query_model.module.label_classifier
    classifier.eval()
    with torch.no_grad():
        z = torch.as_tensor(mean, dtype=torch.float32)
        values = classifier.probabilities(z).numpy()
        score = classifier.novelty_score(z).numpy()
    return pd.DataFrame(values, columns=pd.Index(query_model.registry.label_categories)), score


def _scores(
    design: Design,
    reference: scamort.Model,
    query_model: scamort.Model,
    soft: pd.DataFrame,
    novelty: np.ndarray,
    latent: np.ndarray,
) -> dict[str, Any]:
    out = label_scores(soft, design.query.obs[LABEL].to_numpy(), design.known(), novelty)
    out["mixing"] = mixing(reference.get_latent_representation(), latent)
    out["query_epochs"] = len(query_model.history)
    if design.query_protein is not None:
        imputed = query_model.impute(modality=PROT)
        truth = design.query_protein.loc[design.query.obs_names, imputed.columns].to_numpy()
        out["imputation"] = {"impute": pearson_summary(imputed.to_numpy(), truth)}
        out["protein_median_r"] = out["imputation"]["impute"]["median_pearson"]
    return out


def run_scamort(design: Design, budget: Budget, seed: int) -> dict[str, dict[str, Any]]:
    """Reference, mapped query, label transfer, scored, without (``scamort``) and with
    (``scamort_refined``) refinement of the query cells; both share the reference and the query training."""
    reference, common = _reference(design, budget, seed)
    with timed() as map_watch:
        query_model = scamort.Model.load_query_data(_query_cells(design), reference)
        _train_query(query_model, budget)
    with timed() as predict_watch:
        soft = query_model.predict(soft=True)
        novelty = query_model.novelty().to_numpy()
    with timed() as refine_watch:
        refined = query_model.refine(seed=seed)
        refined_soft, refined_novelty = _refined_probabilities(query_model, refined.mean)
    plain = {**common, "map_seconds": map_watch.seconds + predict_watch.seconds}
    plain.update(
        _scores(design, reference, query_model, soft, novelty, query_model.get_latent_representation())
    )
    polished = {**common, "map_seconds": map_watch.seconds + refine_watch.seconds}
    polished.update(_scores(design, reference, query_model, refined_soft, refined_novelty, refined.mean))
    return {"scamort": plain, "scamort_refined": polished}
