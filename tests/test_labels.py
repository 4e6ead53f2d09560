"""Label transfer: models with labels_key learn their labels, predict calibrated probabilities and flag
cells of types absent from the reference; tl.transfer_labels writes only its documented keys."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

import scamort
from scamort import label_calibration
from scamort.errors import InputError
from scamort.labels import DEFAULT_NOVELTY_THRESHOLD, DEFAULT_THRESHOLD, expected_calibration_error
from tests.conftest import make_counts
from tests.snapshot import assert_refused, take

N_EPOCHS = 40


def _oracle_ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE written out plainly: bins (lo, hi] of width 1/n_bins, the first one closed at 0."""
    total, n = 0.0, len(confidence)
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = [(c > lo or (b == 0 and c >= 0)) and c <= hi for c in confidence]
        members = [i for i, keep in enumerate(inside) if keep]
        if members:
            gap = np.mean([confidence[i] for i in members]) - np.mean([float(correct[i]) for i in members])
            total += len(members) / n * abs(gap)
    return total


@pytest.fixture(scope="module")
def data() -> ad.AnnData:
    """Four well separated types; the reference below lacks type3 (the novel type)."""
    adata = make_counts(n_cells=480, n_genes=80, n_types=4, n_batches=1, seed=3)
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    return adata


@pytest.fixture(scope="module")
def split(data: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    rng = np.random.default_rng(0)
    is_reference = rng.random(data.n_obs) < 0.6
    reference = data[is_reference & (data.obs["cell_type"] != "type3").to_numpy()].copy()
    reference.obs.loc[reference.obs_names[::5], "cell_type"] = np.nan  # a fifth unlabelled
    return reference, data[~is_reference].copy()


@pytest.fixture(scope="module")
def model(split: tuple[ad.AnnData, ad.AnnData]) -> scamort.Model:
    model = scamort.Model(split[0], labels_key="cell_type", n_latent=6, n_hidden=32)
    model.train(max_epochs=N_EPOCHS, progress_bar=False)
    return model


def test_missing_labels_are_unlabelled_and_not_learned_from(split: tuple[ad.AnnData, ad.AnnData]) -> None:
    reference = split[0]
    model = scamort.Model(reference, labels_key="cell_type", n_latent=6, n_hidden=32)
    assert model.registry.label_categories == ("type0", "type1", "type2")
    codes = model._data.labels.numpy()
    missing = reference.obs["cell_type"].isna().to_numpy()
    assert missing.any() and (codes[missing] == -1).all() and (codes[~missing] >= 0).all()
    model.module.train()
    batch = model._data.minibatch(torch.arange(reference.n_obs))
    terms = model.module.loss_terms(batch)
    assert terms.labels is not None
    assert (terms.labels[torch.as_tensor(missing)] == 0).all()
    assert (terms.labels[torch.as_tensor(~missing)] > 0).all()


def test_labels_do_not_change_the_other_weights_at_start(split: tuple[ad.AnnData, ad.AnnData]) -> None:
    plain = scamort.Model(split[0], n_latent=6, n_hidden=32)
    labelled = scamort.Model(split[0], labels_key="cell_type", n_latent=6, n_hidden=32)
    with_labels = labelled.module.state_dict()
    for name, value in plain.module.state_dict().items():
        assert torch.equal(value, with_labels[name]), name
    assert {k for k in with_labels if k not in plain.module.state_dict()} == {
        k for k in with_labels if k.startswith("label_classifier.")
    }


def test_classifier_learns_held_out_cells(model: scamort.Model, split: tuple[ad.AnnData, ad.AnnData]) -> None:
    query = split[1]
    known = (query.obs["cell_type"] != "type3").to_numpy()
    predicted = model.predict(query)
    assert isinstance(predicted, np.ndarray) and predicted.shape == (query.n_obs,)
    assert set(predicted) <= set(model.registry.label_categories)
    accuracy = np.mean(predicted[known] == query.obs["cell_type"].to_numpy()[known])
    assert accuracy > 0.9  # chance: 1/3


def test_soft_rows_are_temperature_scaled_softmax_and_novelty_is_the_distance_map(
    model: scamort.Model, split: tuple[ad.AnnData, ad.AnnData]
) -> None:
    query = split[1]
    soft = model.predict(query, soft=True)
    assert isinstance(soft, pd.DataFrame)
    assert list(soft.columns) == list(model.registry.label_categories)
    assert soft.index.equals(query.obs_names)
    values = soft.to_numpy()
    assert (values >= 0).all() and (values <= 1).all()
    np.testing.assert_allclose(values.sum(1), 1.0, rtol=1e-5)
    classifier = model.module.label_classifier
    z = model.get_latent_representation(query).astype(np.float64)
    # oracle: softmax(logits / T) of the classifier's own logits
    with torch.no_grad():
        logits = classifier(torch.as_tensor(z, dtype=torch.float32)).double().numpy()
    scaled = logits / float(classifier.temperature)
    expected_soft = np.exp(scaled - scaled.max(1, keepdims=True))
    expected_soft /= expected_soft.sum(1, keepdims=True)
    np.testing.assert_allclose(values, expected_soft, rtol=1e-4, atol=1e-6)
    # oracle: 1 - sigmoid(a + b log(min squared Mahalanobis distance)) from the stored buffers
    means = classifier.class_means.double().numpy()
    precision = classifier.precision.double().numpy()
    distance = np.stack([np.einsum("nd,de,ne->n", z - m, precision, z - m) for m in means], 1)
    a, b = classifier.novelty.double().numpy()
    expected = 1 - 1 / (1 + np.exp(-(a + b * np.log(distance.min(1) + 1e-6))))
    score = model.novelty(query)
    assert isinstance(score, pd.Series) and score.index.equals(query.obs_names)
    np.testing.assert_allclose(score.to_numpy(), expected, rtol=1e-4, atol=1e-5)
    assert np.array_equal(model.predict(query), soft.columns.to_numpy()[values.argmax(1)])


def test_novel_type_gets_low_confidence(model: scamort.Model, split: tuple[ad.AnnData, ad.AnnData]) -> None:
    query = split[1]
    novel = (query.obs["cell_type"] == "type3").to_numpy()
    score = model.novelty(query).to_numpy()
    assert np.median(score[~novel]) < DEFAULT_NOVELTY_THRESHOLD < np.median(score[novel])
    assert roc_auc_score(novel, score) > 0.9
    confidence = model.predict(query, soft=True).to_numpy().max(1)
    assert np.median(confidence[~novel]) > DEFAULT_THRESHOLD


def test_confidence_is_calibrated_on_cells_not_trained_on(
    model: scamort.Model, split: tuple[ad.AnnData, ad.AnnData]
) -> None:
    """The temperature-scaled confidence matches the accuracy on held-out cells of reference types, and
    better than its product with the in-distribution probability (the former soft output) does."""
    query = split[1]
    known = (query.obs["cell_type"] != "type3").to_numpy()
    cells = query[known].copy()
    soft = model.predict(cells, soft=True)
    correct = soft.idxmax(axis=1).to_numpy() == cells.obs["cell_type"].to_numpy()
    confidence = soft.to_numpy().max(1)
    product = confidence * (1 - model.novelty(cells).to_numpy())
    ece = expected_calibration_error(confidence, correct)
    assert ece < 0.1
    assert ece < expected_calibration_error(product, correct)


def test_temperature_fit_reduces_calibration_error() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, size=(3000, 5))
    probabilities = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in probabilities])
    overconfident = 4.0 * true_logits
    temperature = label_calibration._fit_temperature(overconfident, labels)
    assert 3.0 < temperature < 5.0

    def ece_of(logits: np.ndarray) -> float:
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        confidence, correct = p.max(1), p.argmax(1) == labels
        value = expected_calibration_error(confidence, correct)
        assert value == pytest.approx(_oracle_ece(confidence, correct), abs=1e-12)
        return value

    before, after = ece_of(overconfident), ece_of(overconfident / temperature)
    assert after < before / 3


def test_predict_after_save_and_load_is_bitwise_equal(
    model: scamort.Model, split: tuple[ad.AnnData, ad.AnnData], tmp_path
) -> None:
    model.save(tmp_path / "m")
    loaded = scamort.Model.load(tmp_path / "m", split[0])
    query = split[1]
    original, again = model.predict(query, soft=True), loaded.predict(query, soft=True)
    assert np.array_equal(original.to_numpy(), again.to_numpy())
    assert float(loaded.module.label_classifier.calibrated) == 1.0


def test_transfer_labels_writes_exactly_its_keys(
    model: scamort.Model, split: tuple[ad.AnnData, ad.AnnData]
) -> None:
    query = split[1].copy()
    before = take(query)
    assert scamort.tl.transfer_labels(query, model) is None
    after = take(query)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == ["adata.obs", "adata.uns"]
    assert list(query.obs.columns) == [
        *split[1].obs.columns,
        "scamort_label",
        "scamort_label_confidence",
        "scamort_label_novelty",
    ]
    assert list(query.uns) == ["scamort_label"]
    params = query.uns["scamort_label"]["params"]
    assert params["threshold"] == DEFAULT_THRESHOLD and params["unknown_label"] == "unknown"
    assert params["novelty_threshold"] == DEFAULT_NOVELTY_THRESHOLD
    soft = model.predict(split[1], soft=True).to_numpy()
    confidence = query.obs["scamort_label_confidence"].to_numpy()
    np.testing.assert_array_equal(confidence, soft.max(1).astype(np.float32))
    labels = query.obs["scamort_label"]
    assert list(labels.cat.categories) == [*model.registry.label_categories, "unknown"]
    novelty = query.obs["scamort_label_novelty"].to_numpy()
    np.testing.assert_array_equal(novelty, model.novelty(split[1]).to_numpy().astype(np.float32))
    unknown = (confidence < DEFAULT_THRESHOLD) | (novelty > DEFAULT_NOVELTY_THRESHOLD)
    assert ((labels == "unknown").to_numpy() == unknown).all()
    novel = (split[1].obs["cell_type"] == "type3").to_numpy()
    assert (labels[novel] == "unknown").mean() > 0.8
    copy = scamort.tl.transfer_labels(
        split[1], model, key_added="mine", threshold=0.0, novelty_threshold=1.0, copy=True
    )
    assert copy is not None and "mine" in copy.obs and "mine" not in split[1].obs
    assert not (copy.obs["mine"] == "unknown").any()


def test_predict_without_labels_is_refused(split: tuple[ad.AnnData, ad.AnnData]) -> None:
    plain = scamort.Model(split[0], n_latent=6, n_hidden=32)
    assert_refused(lambda: plain.predict(), InputError, "no label classifier.*labels_key")
    assert_refused(lambda: scamort.tl.transfer_labels(split[1], plain), InputError, "no label classifier")


def test_bad_labels_columns_are_refused(split: tuple[ad.AnnData, ad.AnnData]) -> None:
    reference = split[0]
    assert_refused(
        lambda: scamort.Model(reference, labels_key="cell_typo"),
        InputError,
        "'cell_typo' is not a column",
        reference,
    )
    empty = reference.copy()
    empty.obs["nothing"] = np.nan
    assert_refused(lambda: scamort.Model(empty, labels_key="nothing"), InputError, "no label at all", empty)


def test_transfer_labels_refuses_bad_options(
    model: scamort.Model, split: tuple[ad.AnnData, ad.AnnData]
) -> None:
    query = split[1]
    assert_refused(
        lambda: scamort.tl.transfer_labels(query, model, threshold=1.5), InputError, "threshold", query
    )
    assert_refused(
        lambda: scamort.tl.transfer_labels(query, model, novelty_threshold=-0.1),
        InputError,
        "novelty_threshold",
        query,
    )
    assert_refused(
        lambda: scamort.tl.transfer_labels(query, model, unknown_label="type0"),
        InputError,
        "unknown_label",
        query,
    )


def test_query_model_carries_the_classifier_and_predicts_its_cells(
    model: scamort.Model, split: tuple[ad.AnnData, ad.AnnData]
) -> None:
    query = split[1].copy()
    query.obs["cell_type"] = "type0"  # labels of the query are never learned from
    query_model = scamort.Model.load_query_data(query, model)
    reference_state = model.module.label_classifier.state_dict()
    for name, value in query_model.module.label_classifier.state_dict().items():
        assert torch.equal(value.cpu(), reference_state[name].cpu()), name
    assert query_model._data.labels is None  # the query's labels are not attached: never learned from
    soft = query_model.predict(soft=True)  # its own cells, through its own encoders
    np.testing.assert_array_equal(soft.to_numpy(), model.predict(query, soft=True).to_numpy())
    assert soft.index.equals(query.obs_names) and list(soft.columns) == list(model.registry.label_categories)
    known = (split[1].obs["cell_type"] != "type3").to_numpy()
    accuracy = np.mean(query_model.predict()[known] == split[1].obs["cell_type"].to_numpy()[known])
    assert accuracy > 0.9
