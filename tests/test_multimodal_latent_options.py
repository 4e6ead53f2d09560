"""Latent-space options of multimodal models: private latent dimensions per modality
(``n_private_latent``) and adversarial mixing of the measured-modality groups (``mixing_weight``).
Oracles for the formulas, the structure of the posterior, behaviour on small data, save/load."""

from __future__ import annotations

import anndata as ad
import mudata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scamort
from scamort import InputError
from scamort.module import VAE, ModuleConfig
from scamort.nn import product_of_experts
from scamort.nn.classifier import PatternClassifier, presence_pattern
from tests.conftest import forget_init_params
from tests.test_multimodal import make_cite, split_mudata, thirds

SMALL = {"batch_key": "batch", "n_latent": 4, "n_hidden": 32}
TRAIN = {"batch_size": 32, "progress_bar": False}
MODALITIES = {"rna": scamort.Modality(), "prot": scamort.Modality()}


@pytest.fixture(scope="module")
def unpaired_mdata():
    adata = make_cite(n_cells=150, seed=3)
    return split_mudata(adata, thirds(adata.n_obs))


@pytest.fixture(scope="module")
def private_model(unpaired_mdata) -> scamort.Model:
    model = scamort.Model(unpaired_mdata, modalities=MODALITIES, n_private_latent=2, **SMALL)
    model.train(max_epochs=20, **TRAIN)
    return model


# ----------------------------------------------------------------------------- product of experts
def test_product_of_experts_with_dims_matches_closed_form() -> None:
    """An expert without an opinion on a dimension has precision 0 there."""
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(2, 5, 6))
    var = rng.lognormal(size=(2, 5, 6))
    mask = rng.integers(0, 2, size=(2, 5)).astype(float)
    dims = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 1, 1]], dtype=float)
    weight = mask[..., None] * dims[:, None, :]
    precision = 1 + (weight / var).sum(0)
    expected_mean = (weight * mean / var).sum(0) / precision
    joint_mean, joint_log_var = product_of_experts(
        torch.tensor(mean), torch.tensor(np.log(var)), torch.tensor(mask), torch.tensor(dims)
    )
    np.testing.assert_allclose(joint_mean.numpy(), expected_mean, rtol=1e-12)
    np.testing.assert_allclose(np.exp(joint_log_var.numpy()), 1 / precision, rtol=1e-12)


# ----------------------------------------------------------------------------- private dimensions
def test_private_blocks_are_the_prior_where_the_modality_is_missing(private_model, unpaired_mdata) -> None:
    module = private_model.module
    assert module.config.private_dims == (2, 2) and module.config.n_latent == 8
    assert module.private_blocks == {"rna": (4, 6), "prot": (6, 8)}
    groups = unpaired_mdata.obs["group"].to_numpy()
    batch = private_model._data.minibatch(torch.arange(unpaired_mdata.n_obs))
    module.eval()
    with torch.no_grad():
        posterior = module.posterior(batch)
    for name, lacking in (("rna", "prot_only"), ("prot", "rna_only")):
        start, stop = module.private_blocks[name]
        rows = torch.as_tensor(groups == lacking)
        assert torch.equal(posterior.mean[rows, start:stop], torch.zeros(int(rows.sum()), 2))
        assert torch.equal(posterior.log_variance[rows, start:stop], torch.zeros(int(rows.sum()), 2))
        # Where the modality is measured its encoder has learned something there.
        assert float(posterior.log_variance[~rows, start:stop].mean()) < -0.05
    # The embedding is the shared part only.
    latent = private_model.get_latent_representation()
    assert latent.shape == (unpaired_mdata.n_obs, 4) and private_model.n_latent == 4
    np.testing.assert_allclose(latent, posterior.mean[:, :4].numpy(), rtol=1e-6, atol=1e-6)
    assert private_model.get_latent_representation(modality="prot").shape == (unpaired_mdata.n_obs, 4)


def test_a_decoder_reads_the_shared_and_its_own_private_dimensions_only(private_model) -> None:
    module = private_model.module
    batch = private_model._data.minibatch(torch.arange(10))
    z = torch.randn(10, module.config.n_latent, requires_grad=True)
    distributions = module.generative(z, batch)
    for name, (start, stop) in module.private_blocks.items():
        (gradient,) = torch.autograd.grad(
            distributions[name].log_prob_rows(batch.modalities[name].counts).sum(), z, retain_graph=True
        )
        reads = gradient.abs().sum(0) > 0
        expected = torch.zeros(module.config.n_latent, dtype=torch.bool)
        expected[: module.config.n_shared] = True
        expected[start:stop] = True
        assert torch.equal(reads, expected), name


def test_private_dimensions_leave_the_alignment_term_alone(private_model) -> None:
    """The alignment term compares the experts on the shared dimensions only."""
    module = private_model.module
    mean = torch.randn(2, 6, module.config.n_latent)
    log_variance = torch.randn(2, 6, module.config.n_latent)
    present = torch.ones(2, 6, dtype=torch.bool)
    changed_mean, changed_log_variance = mean.clone(), log_variance.clone()
    changed_mean[:, :, 4:] += 3.0
    changed_log_variance[:, :, 4:] -= 1.0
    torch.testing.assert_close(
        module.alignment(mean, log_variance, present),
        module.alignment(changed_mean, changed_log_variance, present),
    )
    assert not torch.equal(
        module.alignment(mean, log_variance, present),
        module.alignment(mean + 1.0, log_variance, present),
    )


def test_private_model_learns_imputes_and_refines(private_model) -> None:
    elbo = private_model.history["validation_elbo"].to_numpy()
    assert elbo[-1] > elbo[0]
    imputed = private_model.impute(modality="prot")
    assert imputed.shape == (private_model.adata.n_obs, 6) and np.isfinite(imputed.to_numpy()).all()
    refined = private_model.refine(indices=np.arange(12), n_steps=3)
    assert refined.mean.shape == (12, 8)
    assert private_model.get_latent_representation(indices=np.arange(12), refine_steps=3).shape == (12, 4)
    assert np.isfinite(private_model.get_marginal_ll(indices=np.arange(12), n_mc_samples=5)).all()


def test_private_dimensions_survive_save_and_load(private_model, unpaired_mdata, tmp_path) -> None:
    private_model.save(tmp_path / "model")
    loaded = scamort.Model.load(tmp_path / "model", unpaired_mdata)
    assert loaded.module.config == private_model.module.config
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), private_model.get_latent_representation()
    )
    np.testing.assert_array_equal(
        loaded.impute(modality="rna").to_numpy(), private_model.impute(modality="rna").to_numpy()
    )


def test_private_dimensions_per_modality(unpaired_mdata) -> None:
    model = scamort.Model(unpaired_mdata, modalities=MODALITIES, n_private_latent={"prot": 3}, **SMALL)
    assert model.module.config.private_dims == (0, 3) and model.module.config.n_latent == 7
    assert model.module.private_blocks == {"rna": (4, 4), "prot": (4, 7)}
    assert model.init_params["n_private_latent"] == {"prot": 3}
    with pytest.raises(InputError, match="n_private_latent names 'atac', not a modality"):
        scamort.Model(unpaired_mdata, modalities=MODALITIES, n_private_latent={"atac": 3}, **SMALL)


def test_private_dimensions_need_a_valid_size(counts_adata) -> None:
    with pytest.raises(InputError, match="n_private_latent"):
        scamort.Model(counts_adata, n_private_latent=-1)
    # One modality: nothing to keep private, the model is the plain one.
    assert scamort.Model(counts_adata, n_private_latent=3).module.config.private_dims == ()
    with pytest.raises(ValueError, match="private_dims"):
        VAE(ModuleConfig(modalities=(("a", 5, "nb"), ("b", 5, "nb")), n_latent=4, private_dims=(2,)))
    with pytest.raises(ValueError, match="private_dims"):
        VAE(ModuleConfig(modalities=(("a", 5, "nb"), ("b", 5, "nb")), n_latent=4, private_dims=(2, 2)))


# ----------------------------------------------------------------------------- adversarial mixing
def test_presence_pattern_numbers_the_sets_of_modalities() -> None:
    present = torch.tensor(
        [[True, False, True, True], [False, True, True, False], [False, False, False, True]]
    )
    assert presence_pattern(present).tolist() == [0, 1, 2, 4]


def test_classifier_and_fooling_losses_reach_separate_weights() -> None:
    torch.manual_seed(0)
    classifier = PatternClassifier(n_latent=3, n_modalities=2, n_hidden=8)
    z = torch.randn(7, 3, requires_grad=True)
    pattern = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    own, fool = classifier.losses(z, pattern)
    logits = classifier(z)
    log_p = torch.log_softmax(logits, -1)
    torch.testing.assert_close(own, -log_p[torch.arange(7), pattern])
    others = [[q for q in range(3) if q != p] for p in pattern.tolist()]
    torch.testing.assert_close(fool, torch.stack([-log_p[i, o].mean() for i, o in enumerate(others)]))
    (z_grad,) = torch.autograd.grad(own.sum(), z, allow_unused=True, retain_graph=True)
    assert z_grad is None
    weights = list(classifier.parameters())
    assert all(
        g is None for g in torch.autograd.grad(fool.sum(), weights, allow_unused=True, retain_graph=True)
    )
    assert torch.autograd.grad(fool.sum(), z)[0].abs().sum() > 0


def test_mixing_term_only_while_training_and_only_with_several_patterns(unpaired_mdata) -> None:
    model = scamort.Model(unpaired_mdata, modalities=MODALITIES, mixing_weight=2.0, **SMALL)
    module = model.module
    batch = model._data.minibatch(torch.arange(unpaired_mdata.n_obs))
    module.train()
    terms = module.loss_terms(batch)
    assert terms.mixing is not None and torch.isfinite(terms.mixing).all() and (terms.mixing > 0).all()
    module.zero_grad()
    terms.mixing.sum().backward()
    touched = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("pattern_classifier.") for n in touched)
    assert any(n.startswith("encoders.") for n in touched)
    assert not any(n.startswith("decoders.") for n in touched)
    module.eval()
    assert module.loss_terms(batch).mixing is None
    # A minibatch of one pattern (paired cells only) has nothing to mix.
    module.train()
    paired = np.flatnonzero(unpaired_mdata.obs["group"].to_numpy() == "paired")
    terms = module.loss_terms(model._data.minibatch(torch.as_tensor(paired)))
    assert torch.equal(terms.mixing, torch.zeros(len(paired)))
    off = scamort.Model(unpaired_mdata, modalities=MODALITIES, mixing_weight=0.0, **SMALL)
    assert off.module.pattern_classifier is None
    with pytest.raises(InputError, match="mixing_weight must be a finite number >= 0"):
        scamort.Model(unpaired_mdata, modalities=MODALITIES, mixing_weight=-1.0, **SMALL)


def _own_group_fraction(latent: np.ndarray, groups: np.ndarray, k: int = 10) -> dict[str, float]:
    distances = ((latent[:, None] - latent[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    neighbours = np.argsort(distances, axis=1)[:, :k]
    same = (groups[neighbours] == groups[:, None]).mean(1)
    return {g: float(same[groups == g].mean()) for g in np.unique(groups)}


def test_mixing_brings_protein_only_cells_among_the_others() -> None:
    """Unpaired BMMC CITE-seq (a third of the cells without protein, a third without RNA): protein-only
    cells' posterior means sit together without the adversary and among the others with it."""
    adata = scamort.datasets.bmmc_cite()
    counts = adata.layers["counts"]
    rna = ad.AnnData(sp.csr_matrix(counts, dtype=np.float32), obs=adata.obs[["batch"]].copy())
    protein = adata.obsm["protein_expression"]
    prot = ad.AnnData(
        sp.csr_matrix(protein.to_numpy(dtype=np.float32)),
        obs=adata.obs[["batch"]].copy(),
        var=pd.DataFrame(index=[str(c) for c in protein.columns]),
    )
    groups = thirds(adata.n_obs, seed=0)
    mdata = mudata.MuData(
        {"rna": rna[groups != "prot_only"].copy(), "prot": prot[groups != "rna_only"].copy()}
    )
    mdata.obs["batch"] = adata.obs.loc[mdata.obs_names, "batch"].to_numpy()
    order = pd.Series(groups, index=adata.obs_names).loc[mdata.obs_names].to_numpy()
    own = {}
    for weight in (0.0, 3.0):
        model = scamort.Model(mdata, modalities=MODALITIES, batch_key="batch", mixing_weight=weight)
        model.train(max_epochs=80, batch_size=128, progress_bar=False)
        own[weight] = _own_group_fraction(model.get_latent_representation(), order, k=15)
    assert own[3.0]["prot_only"] < own[0.0]["prot_only"] - 0.04
    assert max(own[3.0].values()) < max(own[0.0].values())


def test_mixing_classifier_survives_save_and_load_and_old_saves_load(unpaired_mdata, tmp_path) -> None:
    model = scamort.Model(
        unpaired_mdata, modalities=MODALITIES, mixing_weight=1.0, n_private_latent=1, **SMALL
    )
    model.train(max_epochs=2, **TRAIN)
    model.save(tmp_path / "model")
    loaded = scamort.Model.load(tmp_path / "model", unpaired_mdata)
    assert loaded.module.config == model.module.config
    for name, tensor in model.module.state_dict().items():
        assert torch.equal(tensor, loaded.module.state_dict()[name]), name
    # A save from before these options (no keys in its spec) loads as a model without them.
    plain = scamort.Model(unpaired_mdata, modalities=MODALITIES, mixing_weight=0.0, **SMALL)
    plain.train(max_epochs=2, **TRAIN)
    plain.save(tmp_path / "plain")
    forget_init_params(tmp_path / "plain", "n_private_latent", "mixing_weight")
    old = scamort.Model.load(tmp_path / "plain", unpaired_mdata)
    assert old.module.config.private_dims == () and old.module.pattern_classifier is None
    np.testing.assert_array_equal(old.get_latent_representation(), plain.get_latent_representation())
