"""Adversarial mixing of panels (``panel_mixing_weight``): a masked modality's cells measured on different
panels should not be told apart in the embedding by which features they measured.

Tiny synthetic CITE-seq-like data from ``tests/test_feature_masks.py``: batch ``b1`` did not measure
:data:`HIDDEN` proteins.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import scamort
from scamort.model_setup import DEFAULT_PANEL_MIXING_WEIGHT
from scamort.nn.classifier import PanelClassifier
from tests.conftest import make_counts
from tests.test_feature_masks import HIDDEN, N_PROTEINS, build, make_cite


def test_the_classifier_scores_the_features_some_panels_lack_and_only_masked_models_have_one() -> None:
    adata = make_cite()
    model = build(adata)
    assert model.init_params["panel_mixing_weight"] == DEFAULT_PANEL_MIXING_WEIGHT > 0
    assert model.module.config.panel_mixing_weight == DEFAULT_PANEL_MIXING_WEIGHT
    varying = model.module.panel_classifiers["prot"].varying.numpy()
    columns = list(adata.obsm["protein"].columns)
    assert varying.tolist() == [c in HIDDEN for c in columns] and varying.shape == (N_PROTEINS,)
    assert len(build(adata, panel_mixing_weight=0.0).module.panel_classifiers) == 0
    assert len(build(adata, None).module.panel_classifiers) == 0  # no mask
    rna_only = scamort.Model(make_counts(), batch_key="batch")
    assert len(rna_only.module.panel_classifiers) == 0
    assert not any(key.startswith("panel") for key in rna_only.module.state_dict())


def test_the_losses_are_the_cross_entropies_of_the_panel_and_of_the_other_panel() -> None:
    torch.manual_seed(0)
    classifier = PanelClassifier(3, 4)
    classifier.set_varying(torch.tensor([[True, True, True, True], [True, False, True, False]]))
    assert classifier.varying.tolist() == [False, True, False, True]
    z = torch.randn(5, 3, requires_grad=True)
    measured = torch.tensor([[True, True, True, True], [True, False, True, False]] * 2 + [[True] * 4])
    loss, fool = classifier.losses(z, measured)
    logits = classifier(z)
    target = measured[:, [1, 3]].float()
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
    flipped = F.binary_cross_entropy_with_logits(logits, 1 - target, reduction="none").mean(1)
    assert torch.allclose(loss, expected) and torch.allclose(fool, flipped)
    # The classifier's loss trains the classifier only, the fooling loss what produced z only.
    z_grad = torch.autograd.grad(loss.sum(), z, allow_unused=True)[0]
    assert z_grad is None or not z_grad.any()
    weights = list(classifier.parameters())
    assert all(g is None for g in torch.autograd.grad(fool.sum(), weights, allow_unused=True))
    assert torch.autograd.grad(fool.sum(), z)[0].abs().sum() > 0
    none = PanelClassifier(3, 4)  # one panel: nothing varies, nothing to learn
    assert all(not value.any() for value in none.losses(z, measured))


def test_the_training_objective_includes_the_panel_term_and_the_elbo_does_not() -> None:
    adata = make_cite()
    on, off = build(adata), build(adata, panel_mixing_weight=0.0)
    for model in (on, off):
        model.train(max_epochs=2, batch_size=32, progress_bar=False)
    # Same starting weights (the classifier is built last), different training.
    assert not torch.equal(on.module.encoders["prot"].head.weight, off.module.encoders["prot"].head.weight)
    batch = next(on._data.iterate(torch.arange(adata.n_obs), adata.n_obs))
    on.module.train()
    terms = on.module.loss_terms(batch)
    assert terms.mixing is not None and bool((terms.mixing > 0).all())
    on.module.eval()
    assert on.module.loss_terms(batch).mixing is None


def _other_batch_share(latent: np.ndarray, batch: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each cell's ``k`` nearest neighbours (itself excluded) from the other batch."""
    distances = ((latent[:, None, :] - latent[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    neighbours = np.argsort(distances, axis=1)[:, :k]
    return float((batch[neighbours] != batch[:, None]).mean())


def test_panel_mixing_mixes_the_panels_in_the_embedding() -> None:
    adata = make_cite(n_cells=240)
    batch = adata.obs["batch"].astype(str).to_numpy()
    shares = {}
    for weight in (0.0, DEFAULT_PANEL_MIXING_WEIGHT):
        model = build(adata, panel_mixing_weight=weight)
        model.train(max_epochs=60, batch_size=64, progress_bar=False)
        shares[weight] = _other_batch_share(model.get_latent_representation(), batch)
    assert shares[DEFAULT_PANEL_MIXING_WEIGHT] > shares[0.0], shares
