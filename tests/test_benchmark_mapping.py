"""The metrics and the site effect of ``benchmarks/mapping.py`` against oracles (sklearn, hand-computed)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import _mapping_goals as goals_module
import _mapping_metrics as metrics
from _mapping_data import CELL_DEPTH_RANGE, GENE_KEEP_RANGE, site_effect


@pytest.fixture
def labels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    truth = rng.choice(list("abcd"), size=200, p=[0.5, 0.3, 0.15, 0.05])
    predicted = np.where(rng.random(200) < 0.7, truth, rng.choice(list("abcde"), size=200))
    return truth, predicted


def test_accuracy_and_macro_f1_match_sklearn(labels: tuple[np.ndarray, np.ndarray]) -> None:
    truth, predicted = labels
    assert metrics.accuracy(truth, predicted) == pytest.approx(accuracy_score(truth, predicted))
    # "e" is only ever predicted: it is not a class of the macro average
    expected = f1_score(truth, predicted, labels=list("abcd"), average="macro")
    assert metrics.macro_f1(truth, predicted) == pytest.approx(expected)
    assert metrics.macro_f1(truth, predicted) != pytest.approx(f1_score(truth, predicted, average="macro"))


def test_ece_hand_computed() -> None:
    # 15 bins of width 1/15: 0.05 -> bin 0, 0.5 and 0.52 -> bin 7 (0.4667, 0.5333], 0.95 and 1.0 -> bin 14
    confidence = np.array([0.05, 0.5, 0.52, 0.95, 1.0])
    correct = np.array([False, True, False, True, True])
    expected = (1 / 5) * abs(0 - 0.05) + (2 / 5) * abs(0.5 - 0.51) + (2 / 5) * abs(1.0 - 0.975)
    assert metrics.expected_calibration_error(confidence, correct) == pytest.approx(expected)
    # bin edges are right-closed: 1/15 falls in the first bin with 0.05
    edge = metrics.expected_calibration_error(np.array([0.05, 1 / 15]), np.array([True, True]))
    assert edge == pytest.approx(1 - (0.05 + 1 / 15) / 2)
    assert metrics.expected_calibration_error(np.ones(4), np.ones(4, dtype=bool)) == 0.0


def test_novelty_auroc_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    novel = rng.random(300) < 0.2
    score = rng.normal(size=300) + novel
    assert metrics.novelty_auroc(score, novel) == pytest.approx(roc_auc_score(novel, score))
    assert metrics.novelty_auroc(score, np.zeros(300, dtype=bool)) is None


def test_mixing_perfect_and_separated() -> None:
    rng = np.random.default_rng(2)
    cloud = rng.normal(size=(400, 3))
    # interleaved halves of one cloud: about 1; far apart: exactly 0
    assert metrics.mixing(cloud[::2], cloud[1::2]) == pytest.approx(1.0, abs=0.1)
    assert metrics.mixing(cloud[::2], cloud[1::2] + 100.0) == 0.0
    # a hand-built case: 2 reference cells, 1 query cell between them, k=2 -> share 1, expected 2/2
    assert metrics.mixing(np.array([[0.0], [2.0]]), np.array([[1.0]]), k=2) == pytest.approx(1.0)


def test_knn_probabilities_are_neighbour_shares() -> None:
    reference = np.array([[0.0], [0.1], [0.2], [5.0], [5.1]])
    probs = metrics.knn_probabilities(reference, np.array(["x", "x", "y", "y", "y"]), np.array([[0.05]]), k=3)
    assert list(probs.columns) == ["x", "y"]
    np.testing.assert_allclose(probs.to_numpy(), [[2 / 3, 1 / 3]])


def test_label_scores_on_known_cells_only() -> None:
    probabilities = pd.DataFrame(
        [[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.4, 0.0], [0.1, 0.1, 0.8]], columns=["a", "b", "unknown"]
    )
    truth = np.array(["a", "a", "a", "z"])
    known = np.array([True, True, True, False])
    scores = metrics.label_scores(probabilities, truth, known)
    assert scores["accuracy"] == pytest.approx(2 / 3)
    assert scores["n_known"] == 3 and scores["n_novel"] == 1
    # novelty 1 - max: 0.1, 0.3, 0.4 for known, 0.2 for the novel cell -> AUROC 1/3
    assert scores["novelty_auroc"] == pytest.approx(1 / 3)
    assert (
        metrics.label_scores(probabilities, truth, known, novelty=np.array([0, 0, 0, 1]))["novelty_auroc"]
        == 1.0
    )


def test_site_effect_thins_by_gene_and_cell() -> None:
    counts = sp.csr_matrix(np.full((2000, 50), 40.0))
    thinned = site_effect(counts, seed=3)
    assert thinned.shape == counts.shape
    dense = thinned.toarray()
    assert np.all(dense <= 40) and np.all(dense == np.rint(dense))
    assert np.array_equal(dense, site_effect(counts, seed=3).toarray())
    gene_keep = dense.mean(0) / (40 * np.mean(CELL_DEPTH_RANGE))
    assert gene_keep.min() > GENE_KEEP_RANGE[0] - 0.05 and gene_keep.max() < GENE_KEEP_RANGE[1] + 0.05
    assert gene_keep.max() - gene_keep.min() > 0.3
    cell_share = dense.sum(1) / dense.sum(1).mean()
    assert cell_share.min() < 0.75 and cell_share.max() > 1.25


def test_goals_compare_with_scanvi() -> None:
    def cell(**values: float) -> dict[str, dict[str, float]]:
        return {k: {"mean": v, "std": 0.0, "n": 3} for k, v in values.items()}

    summary = {
        "worm": {
            "defaults": {
                "scanvi": cell(
                    accuracy=0.8, macro_f1=0.7, ece=0.1, novelty_auroc=0.85, mixing=0.4, map_seconds=90
                ),
                "scamort": cell(
                    accuracy=0.85, macro_f1=0.69, ece=0.05, novelty_auroc=0.9, mixing=0.75, map_seconds=30
                ),
            }
        }
    }
    checks = goals_module.goals(summary)["worm"]["defaults"]["scamort"]
    assert checks["accuracy_at_least_scanvi"] and not checks["macro_f1_at_least_scanvi"]
    assert checks["ece_at_most_half_scanvi"] and checks["map_time_at_most_third_of_scanvi"]
    assert checks["mixing_at_least_0.7"] and checks["novelty_auroc_at_least_scanvi"]
    assert checks["all_pass"] is False


def test_docs_section_shows_the_summary_and_the_failed_goals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "docs" / "scripts"))
    import benchmark_mapping

    def cell(**values: float) -> dict[str, dict[str, float]]:
        return {k: {"mean": v, "std": 0.01, "n": 3} for k, v in values.items()}

    summary = {
        "worm": {"matched": {"scanvi": cell(accuracy=0.812), "scamort": cell(accuracy=0.734, ece=0.05)}}
    }
    payload = {"seeds": [0, 1, 2], "summary": summary, "goals": goals_module.goals(summary)}
    page = benchmark_mapping.mapping({"mapping.json": payload}, Path("."), Path("."))
    assert "| matched | scanvi | 0.812 ± 0.0100 |" in page
    assert "0.734 ± 0.0100" in page and "accuracy_at_least_scanvi" in page
