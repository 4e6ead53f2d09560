"""Multimodal scamort: unpaired integration and cross-modal imputation, side by side with scvi-tools.

Three parts, all in one process, one after the other (never two torch processes at once):

``cite``
    BMMC CITE-seq (600 cells, 41 cell types, 2 batches, 1000 genes + 134 ADT). A seeded random third
    of the cells loses its protein and another third its RNA, as a *structurally* unpaired MuData
    (a cell absent from ``mdata.mod[name]`` lacks that modality). For the joint embedding (the
    posterior mean, ``get_latent_representation()``'s default): kNN (k=15) label transfer from paired
    cells to each unpaired group, the paired cells' leave-one-out kNN accuracy, each group's fraction
    of its 15 neighbours from its own group (1/3 = perfectly mixed) and Leiden ARI/NMI vs
    ``cell_type``. Side by side: the same model without the alignment term and without adversarial
    mixing, the model on the fully paired data and an RNA-only model on all cells' RNA (scored with
    the same group labels).
``multiome``
    BMMC 10x Multiome (500 cells, 21 types, 600 genes + 600 peaks): the same with ATAC instead of
    protein, ATAC modelled as a depth-aware Bernoulli (``"bernoulli_depth"``), a plain Bernoulli (both
    binarised) and a Poisson on fragment counts, ablations as for ``cite``, a paired model with 5
    latent dimensions private to ATAC (``n_private_latent={"atac": 5}``), and (in both parts) unpaired
    and paired models trained on the RNA first (``train(pretrain_modality="rna")``, rows
    ``*_pretrain_rna``); scvi-tools MULTIVI on the
    same unpaired cells
    (missing modalities as all-zero rows, its own convention), with its default sizes and with
    scamort's. Also what a weak expert does to the product (posterior variance, KL to the prior,
    spread of the means), with a plot.
``imputation``
    BMMC CITE-seq with the protein of a seeded 20% of cells held out: impute it from RNA and report the
    per-protein Pearson correlation of ``log1p`` values with the truth (median over proteins), for
    scamort with an NB and with an NB-mixture (``"nbmixture"``) protein likelihood, scvi-tools TOTALVI
    (held-out cells as their own protein-less batches, its documented missing-protein path) and the
    baseline "mean observed protein of the 15 nearest neighbours in RNA PCA space".

Leiden ARI/NMI are averaged over 9 clusterings of each embedding (Leiden seeds ``seed, seed+1,
seed+2`` × resolutions 0.5, 1, 1.5 on one 15-neighbour graph), the same for every model, because one
clustering of a few hundred cells moves by several points with the Leiden seed alone.

Run ``python benchmarks/multimodal.py`` (about 10 minutes on 2 idle CPU cores) or with ``--quick``
(a smoke run, no scvi-tools, -> ``multimodal_quick.json``). ``--sweep`` instead trains the unpaired
scamort models and the imputation model under the settings of :data:`SWEEP_GRID`
(-> ``multimodal_sweep.json``).

JSON fields (``benchmarks/results/multimodal.json``)
----------------------------------------------------
``settings``
    :class:`Settings` of every scamort model (epochs, batch size, lr, n_latent, n_hidden,
    modality_dropout, alignment_weight, mixing_weight, n_private_latent, pretrain_modality, seed);
    a row's ``settings_changed`` lists its departures.
``cite`` / ``multiome``
    ``n_cells``, ``n_features``, ``n_cell_types``, ``group_sizes`` and ``models``: per model
    ``likelihood`` (of the second modality; scamort), ``settings_changed``, ``epochs_run``,
    ``train_seconds``, ``best_validation_elbo`` (scamort), ``paired_loo_accuracy``,
    ``transfer_accuracy`` (per unpaired group), ``gap_to_paired`` (paired minus group accuracy),
    ``own_group_fraction`` (per group) and ``leiden`` (``ari`` and ``nmi``: means over the 9
    clusterings, ``ari_std``/``nmi_std``, ``n_clusters`` at resolution 1, ``n_clusterings``).
    ``multiome`` also has ``weak_expert`` (per unpaired model: ``joint_by_group`` and
    ``paired_cells_single_expert``, each with ``mean_posterior_variance``, ``mean_kl_to_prior``,
    ``mean_norm_of_mean``, ``spread_of_means``) and ``plot`` (the PNG's path).
``imputation``
    ``scamort_nb`` and ``scamort_nbmixture``: ``epochs_run``, ``train_seconds``,
    ``best_validation_elbo``, ``library_correlation`` (Pearson of predicted and true log protein
    library on the held-out cells), and Pearson summaries (``median_pearson``, ``mean_pearson``,
    ``n_features_scored``) of ``impute`` (``impute()``: library predicted by the library-size head),
    ``median_library`` (the decoded proportions × the median measured library, the behaviour before
    the head), ``oracle_library`` (× the true held-out library: a diagnostic upper bound, not an
    imputation) and for the mixture ``impute_foreground_only``. Then ``knn_rna_pca_baseline``,
    ``knn_scamort_latent`` and ``totalvi`` (``foreground_only`` and ``with_background``).
``goals``
    Which acceptance goals of the issue each model meets.
``environment``, ``numba_warmup_seconds``, ``total_seconds``
    Machine and package versions, and timings.
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from _common import RESULTS_DIR, environment_info, warm_up_numba, write_json
from _multimodal_data import assign_groups, load_cite, load_multiome, positions, to_mudata
from _multimodal_goals import goals
from _multimodal_metrics import knn_protein_baseline, neighbour_mean, pearson_summary, score_embedding
from _multimodal_models import (
    ATAC_VARIANTS,
    MULTIVI_ARCHITECTURES,
    Row,
    Settings,
    cite_rows,
    fit_scamort,
    multiome_rows,
    training_record,
)
from _multimodal_scvi import score_multivi, score_totalvi
from _multimodal_weak_expert import plot_weak_expert, weak_expert_report

import scamort


# --------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------
def run_integration(
    rna: ad.AnnData, other: ad.AnnData, second: str, rows: Sequence[Row], settings: Settings
) -> tuple[dict[str, Any], dict[str, scamort.Model], pd.DataFrame]:
    """Train and score each of ``rows`` on one pair of modalities (unpaired or fully paired cells)."""
    obs = rna.obs[["cell_type", "batch"]].copy()
    obs["group"] = assign_groups(rna.n_obs, second, settings.seed)
    groups = obs["group"].to_numpy()
    parts = {"rna": rna, second: other}
    all_cells = np.ones(rna.n_obs, bool)
    result: dict[str, Any] = {
        "n_cells": rna.n_obs,
        "n_features": {"rna": rna.n_vars, second: other.n_vars},
        "n_cell_types": int(obs["cell_type"].nunique()),
        "group_sizes": {str(g): int((groups == g).sum()) for g in np.unique(groups)},
        "models": {},
    }
    data = {
        "unpaired": to_mudata(parts, {"rna": groups != f"{second}_only", second: groups != "rna_only"}, obs),
        "paired": to_mudata(parts, {"rna": all_cells, second: all_cells}, obs),
        "rna_only": to_mudata({"rna": rna}, {"rna": all_cells}, obs),
    }
    models: dict[str, scamort.Model] = {}
    for row in rows:
        if row.second is None:
            cells, modalities = data["rna_only"], {"rna": scamort.Modality()}
        else:
            cells = data["paired" if row.paired else "unpaired"]
            modalities = {"rna": scamort.Modality(), second: row.second}
        models[row.name], seconds = fit_scamort(cells, modalities, replace(settings, **row.change))
        scores: dict[str, Any] = {
            "likelihood": None if row.second is None else row.second.likelihood,
            "settings_changed": dict(row.change),
            **training_record(models[row.name], seconds),
        }
        latent = models[row.name].get_latent_representation(indices=positions(models[row.name], obs.index))
        scores.update(score_embedding(latent, obs, settings.seed))
        report(row.name, scores)
        result["models"][row.name] = scores
    return result, models, obs


def report(name: str, scores: Mapping[str, Any]) -> None:
    """One progress line per scored model."""
    fields = {
        key: scores[key]
        for key in ("epochs_run", "train_seconds", "paired_loo_accuracy", "transfer_accuracy")
        if key in scores
    }
    fields["own"] = scores.get("own_group_fraction")
    fields["leiden"] = {k: scores["leiden"][k] for k in ("ari", "nmi")} if "leiden" in scores else None
    print(f"[multimodal] {name}: {_rounded(fields)}", flush=True)


def _rounded(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 3)
    return value


def run_cite(settings: Settings, full: bool = True) -> dict[str, Any]:
    """Part (a): unpaired RNA + protein integration on the BMMC CITE-seq cells."""
    rna, prot = load_cite()
    result, _, _ = run_integration(rna, prot, "prot", cite_rows(settings, full), settings)
    return result


def run_multiome(
    settings: Settings, full: bool, multivi_epochs: int | None, plot_path: Path | None
) -> dict[str, Any]:
    """Part (b): unpaired RNA + ATAC integration on the BMMC Multiome cells, with MULTIVI."""
    rna, atac = load_multiome()
    result, models, obs = run_integration(rna, atac, "atac", multiome_rows(settings, full), settings)
    result["weak_expert"] = {
        name: weak_expert_report(model, obs, "atac")
        for name, model in models.items()
        if name.startswith("unpaired")
    }
    if plot_path is not None:
        first = next(iter(ATAC_VARIANTS))
        plot_weak_expert(models[f"unpaired_{first}"], obs, plot_path)
        repository = RESULTS_DIR.parent.parent
        resolved = plot_path.resolve()
        result["plot"] = str(
            resolved.relative_to(repository) if resolved.is_relative_to(repository) else resolved
        )
    if multivi_epochs is not None:
        for name, architecture in MULTIVI_ARCHITECTURES.items():
            result["models"][name] = _run_tool(
                lambda a=architecture: score_multivi(rna, atac, obs, settings.seed, multivi_epochs, a)
            )
            report(name, result["models"][name])
    return result


def run_imputation(settings: Settings, with_totalvi: bool, heldout_fraction: float = 0.2) -> dict[str, Any]:
    """Part (c): protein of a seeded 20% of cells held out and imputed from RNA.

    For an NB and an NB-mixture protein likelihood: ``impute()`` (decoded protein × the library
    predicted by the protein's library-size head), the decoded protein × the median measured library
    (``median_library``, what ``impute`` did before the head) and × the true held-out library
    (``oracle_library``, a diagnostic upper bound, not an imputation).
    """
    rna, prot = load_cite()
    n = rna.n_obs
    heldout = np.zeros(n, dtype=bool)
    heldout[np.random.default_rng(settings.seed).permutation(n)[: round(heldout_fraction * n)]] = True
    truth = prot.X[heldout].toarray()
    library = np.asarray(prot.X.sum(1)).ravel()
    obs = rna.obs[["cell_type", "batch"]].copy()
    data = to_mudata({"rna": rna, "prot": prot}, {"rna": np.ones(n, bool), "prot": ~heldout}, obs)
    result: dict[str, Any] = {"n_cells": n, "n_heldout": int(heldout.sum()), "n_proteins": prot.n_vars}
    latent = None
    for likelihood in ("nb", "nbmixture"):
        spec = scamort.Modality(likelihood=likelihood)
        model, seconds = fit_scamort(data, {"rna": scamort.Modality(), "prot": spec}, settings)
        rows = positions(model, obs.index[heldout])
        proportions = model.get_normalized_expression(
            indices=rows, modality="prot", library_size=1.0
        ).to_numpy()
        predicted = model.predict_library_size(indices=rows, modality="prot")
        scores: dict[str, Any] = {
            **training_record(model, seconds),
            "library_correlation": float(np.corrcoef(np.log(predicted), np.log(library[heldout]))[0, 1]),
            "impute": pearson_summary(model.impute(indices=rows, modality="prot").to_numpy(), truth),
            "median_library": pearson_summary(proportions * np.median(library[~heldout]), truth),
            "oracle_library": pearson_summary(proportions * library[heldout, None], truth),
        }
        if likelihood == "nbmixture":
            foreground = model.impute(indices=rows, modality="prot", include_background=False)
            scores["impute_foreground_only"] = pearson_summary(foreground.to_numpy(), truth)
        else:
            latent = model.get_latent_representation(indices=positions(model, obs.index))
        print(f"[multimodal] imputation scamort {likelihood}: {_rounded(scores)}", flush=True)
        result[f"scamort_{likelihood}"] = scores
    result["knn_rna_pca_baseline"] = pearson_summary(knn_protein_baseline(rna, prot, heldout), truth)
    result["knn_scamort_latent"] = pearson_summary(neighbour_mean(latent, prot.X.toarray(), heldout), truth)
    if with_totalvi:
        result["totalvi"] = _run_tool(lambda: score_totalvi(rna, prot, heldout, truth, settings.seed))
    return result


def _run_tool(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one competitor; a failure is recorded in the JSON instead of ending the benchmark."""
    try:
        return run()
    except Exception as err:  # recorded in the JSON, not hidden
        traceback.print_exc()
        return {"error": repr(err)}


# --------------------------------------------------------------------------------------
# Goals and sweep
# --------------------------------------------------------------------------------------


def sweep(base: Settings, grid: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Unpaired CITE, unpaired multiome (first ATAC variant) and imputation models under each setting."""
    rows = []
    for change in grid:
        settings = replace(base, **change)
        print(f"[sweep] {change}", flush=True)
        started = time.perf_counter()
        row: dict[str, Any] = {"settings": asdict(settings)}
        row["cite"] = run_cite(settings, full=False)["models"]["unpaired_nb"]
        rna, atac = load_multiome()
        first = next(iter(ATAC_VARIANTS))
        multiome, _, _ = run_integration(rna, atac, "atac", multiome_rows(settings, False), settings)
        row["multiome"] = multiome["models"][f"unpaired_{first}"]
        row["imputation"] = run_imputation(settings, with_totalvi=False)["scamort_nb"]
        row["seconds"] = time.perf_counter() - started
        print(f"[sweep] {_sweep_line(row)}", flush=True)
        rows.append(row)
    return rows


def _sweep_line(row: Mapping[str, Any]) -> str:
    cite, multiome = row["cite"], row["multiome"]
    return (
        f"cite paired {cite['paired_loo_accuracy']:.3f} transfer {_rounded(cite['transfer_accuracy'])} "
        f"own {_rounded(cite['own_group_fraction'])} | multiome paired "
        f"{multiome['paired_loo_accuracy']:.3f} transfer {_rounded(multiome['transfer_accuracy'])} "
        f"own {_rounded(multiome['own_group_fraction'])} | "
        f"impute {row['imputation']['impute']['median_pearson']:.3f} | {row['seconds']:.0f}s"
    )


SWEEP_GRID: tuple[dict[str, Any], ...] = (
    {"alignment_weight": 0.0},
    {"alignment_weight": 1.0},
    {"alignment_weight": 3.0},
    {"alignment_weight": 1.0, "modality_dropout": 0.6},
    {"alignment_weight": 0.0, "seed": 1},
    {"alignment_weight": 1.0, "seed": 1},
)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 epochs, no competitors")
    parser.add_argument("--sweep", action="store_true", help="scamort settings sweep instead")
    parser.add_argument("--parts", nargs="+", default=["cite", "multiome", "imputation"])
    parser.add_argument("--epochs", type=int, default=Settings.max_epochs)
    parser.add_argument("--modality-dropout", type=float, default=Settings.modality_dropout)
    parser.add_argument("--alignment-weight", type=float, default=Settings.alignment_weight)
    parser.add_argument("--mixing-weight", type=float, default=Settings.mixing_weight)
    parser.add_argument("--n-private-latent", type=int, default=Settings.n_private_latent)
    parser.add_argument("--n-latent", type=int, default=Settings.n_latent)
    parser.add_argument("--pretrain-modality", default=None, help="e.g. rna; default none")
    parser.add_argument("--multivi-epochs", type=int, default=500, help="0 skips MULTIVI")
    parser.add_argument("--no-scvi", action="store_true", help="skip MULTIVI and TOTALVI")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the selected parts and write the JSON."""
    args = parse_args(argv)
    settings = Settings(
        max_epochs=5 if args.quick else args.epochs,
        n_latent=args.n_latent,
        modality_dropout=args.modality_dropout,
        alignment_weight=args.alignment_weight,
        mixing_weight=args.mixing_weight,
        n_private_latent=args.n_private_latent,
        pretrain_modality=args.pretrain_modality,
        seed=args.seed,
    )
    suffix = "_sweep" if args.sweep else ("_quick" if args.quick else "")
    out = args.out or RESULTS_DIR / f"multimodal{suffix}.json"
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "benchmark": "multimodal",
        "settings": asdict(settings),
        "environment": environment_info(),
        "numba_warmup_seconds": warm_up_numba(),
    }
    if args.sweep:
        payload["sweep"] = sweep(settings, SWEEP_GRID)
    else:
        use_scvi = not (args.quick or args.no_scvi)
        multivi_epochs = args.multivi_epochs if use_scvi and args.multivi_epochs > 0 else None
        if "cite" in args.parts:
            payload["cite"] = run_cite(settings)
        if "multiome" in args.parts:
            plot = out.with_name(out.stem + "_weak_expert.png")
            payload["multiome"] = run_multiome(settings, True, multivi_epochs, plot)
        if "imputation" in args.parts:
            payload["imputation"] = run_imputation(settings, with_totalvi=use_scvi)
        payload["goals"] = goals(payload)
    payload["total_seconds"] = time.perf_counter() - started
    write_json(out, payload)
    print(f"wrote {out} in {payload['total_seconds']:.0f}s")
    return payload


if __name__ == "__main__":
    main()
