"""Multimodal options: the NB-mixture protein likelihood, the depth-aware Bernoulli, the library-size
heads and the alignment term. Oracles for the formulas, behaviour on small data, save/load round trips."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st
import torch

import scamort
from scamort import InputError
from scamort.data.sparse_batch import SparseBatch
from scamort.distributions import NegativeBinomialMixture, binarised_poisson_logits
from scamort.module import Posterior, jeffreys_divergence, single_expert_posteriors
from tests.conftest import forget_init_params, make_counts
from tests.test_multimodal import make_cite, split_mudata, thirds

SMALL = {"batch_key": "batch", "n_latent": 4, "n_hidden": 32}
TRAIN = {"batch_size": 32, "progress_bar": False}

# (mu_background, mu_foreground, theta, P(background)) spanning small to large means.
MIXTURE_CASES = [
    (0.05, 0.5, 0.3, 0.5),
    (2.0, 30.0, 5.0, 0.8),
    (10.0, 10.5, 1.0, 0.2),
    (50.0, 4e3, 20.0, 0.01),
]
COUNTS = np.array([0, 1, 2, 5, 17, 120, 3000], dtype=np.float64)


def mixture(mu_b: float, mu_f: float, theta: float, pi: float, n: int) -> NegativeBinomialMixture:
    def full(value: float) -> torch.Tensor:
        return torch.full((n,), value, dtype=torch.float64)

    return NegativeBinomialMixture(
        full(np.log(mu_b)), full(np.log(mu_f)), full(np.log(theta)), full(np.log(pi / (1 - pi)))
    )


def nb_pmf(x: np.ndarray, mu: float, theta: float) -> np.ndarray:
    return st.nbinom.pmf(x, theta, theta / (theta + mu))


# ----------------------------------------------------------------------------- NB mixture
@pytest.mark.parametrize(("mu_b", "mu_f", "theta", "pi"), MIXTURE_CASES)
def test_mixture_log_prob_matches_scipy(mu_b: float, mu_f: float, theta: float, pi: float) -> None:
    ours = mixture(mu_b, mu_f, theta, pi, len(COUNTS)).log_prob(torch.tensor(COUNTS)).numpy()
    with np.errstate(divide="ignore"):
        oracle = np.log(pi * nb_pmf(COUNTS, mu_b, theta) + (1 - pi) * nb_pmf(COUNTS, mu_f, theta))
    finite = np.isfinite(oracle)  # scipy underflows to 0 far in the tails; ours stays finite there
    np.testing.assert_allclose(ours[finite], oracle[finite], rtol=1e-9, atol=1e-9)
    assert np.isfinite(ours).all()


@pytest.mark.parametrize(("mu_b", "mu_f", "theta", "pi"), MIXTURE_CASES[:3])
def test_mixture_moments_and_samples(mu_b: float, mu_f: float, theta: float, pi: float) -> None:
    dist = mixture(mu_b, mu_f, theta, pi, 1)
    support = np.arange(0, 4000)
    pmf = pi * nb_pmf(support, mu_b, theta) + (1 - pi) * nb_pmf(support, mu_f, theta)
    mean = (support * pmf).sum()
    np.testing.assert_allclose(dist.mean.item(), mean, rtol=1e-6)
    np.testing.assert_allclose(dist.variance.item(), (support**2 * pmf).sum() - mean**2, rtol=1e-5)
    np.testing.assert_allclose(dist.foreground_mean.item(), (1 - pi) * mu_f, rtol=1e-12)
    torch.manual_seed(0)
    draws = dist.sample(torch.Size([100_000])).numpy()
    assert abs(draws.mean() - mean) < 4 * np.sqrt(dist.variance.item() / draws.size)


def _mixture_case(per_cell_theta: bool) -> tuple[NegativeBinomialMixture, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    log_b = torch.randn(7, 11, generator=generator, dtype=torch.float64)
    log_f = log_b + torch.rand(7, 11, generator=generator, dtype=torch.float64) * 3
    log_theta = torch.randn(*((7, 11) if per_cell_theta else (11,)), generator=generator, dtype=torch.float64)
    logits = torch.randn(7, 11, generator=generator, dtype=torch.float64)
    for tensor in (log_b, log_f, log_theta, logits):
        tensor.requires_grad_(True)
    dist = NegativeBinomialMixture(log_b, log_f, log_theta, logits)
    counts = dist.sample()
    counts[0] = 0  # an all-zero row
    counts[1, :5] = 0
    return dist, counts


@pytest.mark.parametrize("per_cell_theta", [False, True])
def test_mixture_sparse_row_sums_and_gradients_equal_dense(per_cell_theta: bool) -> None:
    dist, counts = _mixture_case(per_cell_theta)
    sparse = dist.log_prob_rows(SparseBatch.from_dense(counts))
    dense = dist.log_prob(counts).sum(-1)
    torch.testing.assert_close(sparse, dense, rtol=1e-11, atol=1e-11)
    parameters = (dist.log_mu_background, dist.log_mu_foreground, dist.log_theta, dist.mixture_logits)
    weights = torch.arange(7, dtype=torch.float64)
    for ours, reference in zip(
        torch.autograd.grad((sparse * weights).sum(), parameters),
        torch.autograd.grad((dense * weights).sum(), parameters),
        strict=True,
    ):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- depth-aware Bernoulli
def test_binarised_poisson_logits_give_one_minus_exp_minus_rate() -> None:
    log_rate = torch.linspace(-40, 6, 200, dtype=torch.float64)
    rate = log_rate.exp()
    logits = binarised_poisson_logits(log_rate)
    log_p_one = logits - torch.nn.functional.softplus(logits)
    torch.testing.assert_close(log_p_one, torch.log(-torch.expm1(-rate)), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(logits - log_p_one, rate, rtol=1e-9, atol=1e-10)  # log p(0) = -rate
    extreme = torch.tensor([-200.0, -8.0, 5.0, 80.0], requires_grad=True)
    values = binarised_poisson_logits(extreme)
    (grad,) = torch.autograd.grad(values.sum(), extreme)
    assert torch.isfinite(values).all() and torch.isfinite(grad).all()


# ----------------------------------------------------------------------------- alignment term
def test_jeffreys_divergence_matches_two_kls() -> None:
    generator = torch.Generator().manual_seed(2)
    first, second = (
        Posterior(torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator))
        for _ in range(2)
    )

    def kl(p: Posterior, q: Posterior) -> torch.Tensor:
        return torch.distributions.kl_divergence(
            torch.distributions.Normal(p.mean, p.std), torch.distributions.Normal(q.mean, q.std)
        ).sum(-1)

    torch.testing.assert_close(jeffreys_divergence(first, second), kl(first, second) + kl(second, first))
    torch.testing.assert_close(jeffreys_divergence(first, first), torch.zeros(5), atol=1e-6, rtol=0)


def _mean_paired_jeffreys(model: scamort.Model, paired: np.ndarray) -> float:
    model.module.eval()
    batch = model._data.minibatch(torch.as_tensor(np.flatnonzero(paired)))
    with torch.no_grad():
        mean, log_variance, _ = model.module.experts(batch)
        singles = single_expert_posteriors(mean, log_variance)
        divergence = jeffreys_divergence(
            Posterior(singles.mean[0], singles.log_variance[0]),
            Posterior(singles.mean[1], singles.log_variance[1]),
        )
    return float(divergence.mean())


def test_alignment_term_reduces_the_divergence_between_experts() -> None:
    adata = make_cite(n_cells=150, seed=3)
    mdata = split_mudata(adata, thirds(adata.n_obs))
    paired = mdata.obs["group"].to_numpy() == "paired"
    divergence = {}
    for weight in (0.0, 5.0):
        model = scamort.Model(
            mdata,
            modalities={"rna": scamort.Modality(), "prot": scamort.Modality()},
            alignment_weight=weight,
            **SMALL,
        )
        model.train(max_epochs=25, **TRAIN)
        divergence[weight] = _mean_paired_jeffreys(model, paired)
    assert divergence[5.0] < 0.5 * divergence[0.0]


def test_alignment_and_library_terms_only_while_training(counts_adata) -> None:
    adata = make_cite()
    model = scamort.Model(
        adata,
        modalities={"rna": scamort.Modality(), "prot": scamort.Modality(obsm_key="protein")},
        alignment_weight=2.0,
        **SMALL,
    )
    batch = model._data.minibatch(torch.arange(20))
    model.module.train()
    terms = model.module.loss_terms(batch)
    assert terms.alignment is not None and (terms.alignment >= 0).all()
    assert terms.library is not None and torch.isfinite(terms.library).all()
    torch.testing.assert_close(
        terms.elbo(0.5), terms.total_reconstruction - 0.5 * (terms.kl + terms.alignment) - terms.library
    )
    # The library heads learn from a detached latent: their loss reaches no other weight.
    model.module.zero_grad()
    terms.library.sum().backward()
    for name, parameter in model.module.named_parameters():
        touched = parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)
        assert touched == name.startswith("library_heads."), name
    model.module.eval()
    terms = model.module.loss_terms(batch)
    assert terms.alignment is None and terms.library is None
    with pytest.raises(InputError, match="alignment_weight must be a finite number >= 0"):
        scamort.Model(counts_adata, alignment_weight=-1.0)


# ----------------------------------------------------------------------------- library-size heads
def test_library_head_learns_the_protein_library_on_real_data() -> None:
    adata = scamort.datasets.bmmc_cite()
    protein = adata.obsm["protein_expression"]
    library = protein.to_numpy().sum(1)
    rng = np.random.default_rng(0)
    adata.obs["has_prot"] = rng.random(adata.n_obs) > 0.2
    model = scamort.Model(
        adata,
        modalities={
            "rna": scamort.Modality(layer="counts"),
            "prot": scamort.Modality(obsm_key="protein_expression", present_key="has_prot"),
        },
        batch_key="batch",
        n_latent=10,
        n_hidden=64,
    )
    model.train(max_epochs=60, progress_bar=False)
    predicted = model.predict_library_size(modality="prot")
    measured = adata.obs["has_prot"].to_numpy()
    r_measured = np.corrcoef(np.log(predicted[measured]), np.log(library[measured]))[0, 1]
    r_heldout = np.corrcoef(np.log(predicted[~measured]), np.log(library[~measured]))[0, 1]
    # The head reads the RNA latent; the RNA library alone correlates with the protein library at 0.33.
    assert r_measured > 0.4 and r_heldout > 0.4, (r_measured, r_heldout)
    # impute(): measured cells keep their own library, the others get the predicted one.
    imputed = model.impute(modality="prot").to_numpy().sum(1)
    np.testing.assert_allclose(imputed[measured], library[measured], rtol=1e-4)
    np.testing.assert_allclose(imputed[~measured], predicted[~measured], rtol=1e-4)
    latent_scaled = model.get_normalized_expression(modality="prot", library_size="latent").to_numpy()
    np.testing.assert_allclose(latent_scaled.sum(1), predicted, rtol=1e-4)


def test_library_size_latent_needs_a_head(counts_adata) -> None:
    model = scamort.Model(counts_adata, n_latent=4, n_hidden=16)
    with pytest.raises(InputError, match="has no library-size head"):
        model.get_normalized_expression(library_size="latent")
    with pytest.raises(InputError, match="library_size must be a positive number or 'latent'"):
        model.get_normalized_expression(library_size="observed")


# ----------------------------------------------------------------------------- new likelihoods in models
@pytest.fixture(scope="module")
def mixture_model() -> tuple:
    """Unpaired RNA + protein (nbmixture) + accessibility (bernoulli_depth), briefly trained."""
    adata = make_cite(n_cells=120, seed=5)
    adata.layers["atac"] = adata.X.copy()
    groups = thirds(adata.n_obs, seed=1)
    adata.obs["has_prot"] = groups != "rna_only"
    adata.obs["has_atac"] = groups != "prot_only"
    modalities = {
        "rna": scamort.Modality(),
        "prot": scamort.Modality(obsm_key="protein", likelihood="nbmixture", present_key="has_prot"),
        "atac": scamort.Modality(
            layer="atac", likelihood="bernoulli_depth", binarize=True, present_key="has_atac"
        ),
    }
    model = scamort.Model(adata, modalities=modalities, **SMALL)
    model.train(max_epochs=15, **TRAIN)
    return adata, model


def test_nbmixture_and_depth_bernoulli_train_and_impute(mixture_model) -> None:
    adata, model = mixture_model
    history = model.history
    assert np.isfinite(history.drop(columns="seconds").to_numpy()).all()
    assert history["validation_elbo"].iloc[-1] > history["validation_elbo"].iloc[0]
    assert set(model.module.library_heads) == {"rna", "prot", "atac"}
    with_background = model.impute(modality="prot").to_numpy()
    foreground = model.impute(modality="prot", include_background=False).to_numpy()
    assert (foreground > 0).all() and (foreground < with_background).all()
    open_probability = model.impute(modality="atac").to_numpy()
    assert ((open_probability > 0) & (open_probability < 1)).all()
    # Cells with more open features get higher probabilities (depth enters like a library size).
    measured = adata.obs["has_atac"].to_numpy()
    depth = (adata.layers["atac"] > 0).sum(1).A1
    r = np.corrcoef(depth[measured], open_probability[measured].sum(1))[0, 1]
    assert r > 0.5
    samples = model.posterior_predictive_sample(modality="prot", n_samples=2)
    assert samples.shape == (2, adata.n_obs, with_background.shape[1])


def test_new_options_survive_save_and_load(mixture_model, tmp_path) -> None:
    adata, model = mixture_model
    model.save(tmp_path / "model")
    loaded = scamort.Model.load(tmp_path / "model", adata)
    assert loaded.module.config == model.module.config
    for name, tensor in model.module.state_dict().items():
        assert torch.equal(tensor.cpu(), loaded.module.state_dict()[name]), name
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    for modality in ("prot", "atac"):
        np.testing.assert_array_equal(
            loaded.impute(modality=modality).to_numpy(), model.impute(modality=modality).to_numpy()
        )
        np.testing.assert_array_equal(
            loaded.predict_library_size(modality=modality), model.predict_library_size(modality=modality)
        )


def test_a_multimodal_model_saved_without_the_new_options_still_loads(tmp_path) -> None:
    """Saves from before the library heads and the alignment term (their keys absent) load as they were."""
    adata = make_cite()
    adata.obs["has_prot"] = np.arange(adata.n_obs) % 3 != 0
    modalities = {
        "rna": scamort.Modality(),
        "prot": scamort.Modality(obsm_key="protein", present_key="has_prot"),
    }
    model = scamort.Model(adata, modalities=modalities, **SMALL)
    model.train(max_epochs=2, **TRAIN)
    model.save(tmp_path / "model")
    forget_init_params(tmp_path / "model", "alignment_weight", "library_heads")
    weights_path = tmp_path / "model" / "weights.pt"
    state = torch.load(weights_path, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("library_heads.")}, weights_path)

    old = scamort.Model.load(tmp_path / "model", adata)
    assert old.module.config.alignment_weight == 0.0 and len(old.module.library_heads) == 0
    np.testing.assert_array_equal(old.get_latent_representation(), model.get_latent_representation())
    missing = ~adata.obs["has_prot"].to_numpy()
    library = adata.obsm["protein"].to_numpy().sum(1)
    imputed = old.impute(modality="prot").to_numpy().sum(1)
    np.testing.assert_allclose(imputed[missing], np.median(library[~missing]), rtol=1e-4)


def test_validation_knows_the_new_likelihoods() -> None:
    adata = make_cite()
    protein = adata.obsm["protein"].copy()
    protein.iloc[0, 0] = 2.5
    adata.obsm["protein"] = protein
    spec = {"rna": scamort.Modality(), "prot": scamort.Modality(obsm_key="protein", likelihood="nbmixture")}
    with pytest.raises(InputError, match="non-integer"):
        scamort.Model(adata, modalities=spec)
    counts = make_counts(n_cells=60)
    counts.layers["atac"] = counts.X.copy()
    with pytest.raises(InputError, match=r"non-binary \(not 0 or 1\) entries .*use binarize=True"):
        scamort.Model(
            counts,
            modalities={
                "rna": scamort.Modality(),
                "atac": scamort.Modality(layer="atac", likelihood="bernoulli_depth"),
            },
        )
