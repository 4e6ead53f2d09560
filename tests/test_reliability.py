"""Reliability: kill-and-resume, non-finite losses, extreme data, reproducibility, the save-format fixture."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scamort
from scamort.train import NonFiniteLossError
from tests.conftest import make_counts

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "model_v1"
TRAIN_OPTIONS = {"max_epochs": 8, "kl_warmup_epochs": 2, "early_stopping": False, "progress_bar": False}


def _weights(model: scamort.Model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def test_killed_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    reference = scamort.Model(make_counts(n_cells=300), seed=3)
    reference.train(**TRAIN_OPTIONS)

    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import scamort
        import scamort.train.loop as loop
        from tests.conftest import make_counts

        original, calls = loop._evaluate, [0]

        def dying(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 4:  # in epoch 4, after its training steps, before its checkpoint
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)

        loop._evaluate = dying
        model = scamort.Model(make_counts(n_cells=300), seed=3)
        model.train(checkpoint_dir=sys.argv[1], **{TRAIN_OPTIONS!r})
        """
    )
    checkpoints = tmp_path / "checkpoints"
    killed = subprocess.run([sys.executable, "-c", script, str(checkpoints)], check=False)
    assert killed.returncode == -9
    saved = torch.load(checkpoints / "checkpoint.pt", weights_only=True)
    assert saved["progress"]["epoch"] == 3

    resumed = scamort.Model(make_counts(n_cells=300), seed=3)
    history = resumed.train(checkpoint_dir=checkpoints, **TRAIN_OPTIONS)
    for name, tensor in _weights(reference).items():
        torch.testing.assert_close(_weights(resumed)[name], tensor, rtol=0, atol=0)
    columns = [c for c in history.columns if c != "seconds"]
    pd.testing.assert_frame_equal(history[columns], reference.history[columns])


def test_checkpoint_from_other_options_is_refused(tmp_path: Path) -> None:
    model = scamort.Model(make_counts(n_cells=120))
    model.train(checkpoint_dir=tmp_path, **{**TRAIN_OPTIONS, "max_epochs": 2})
    with pytest.raises(scamort.InputError, match=r"other training options \(lr\)"):
        model.train(checkpoint_dir=tmp_path, **{**TRAIN_OPTIONS, "max_epochs": 2}, lr=0.01)


def test_non_finite_loss_stops_training_and_keeps_last_good_weights(monkeypatch) -> None:
    adata = make_counts(n_cells=150)
    one_epoch = scamort.Model(adata)
    one_epoch.train(**{**TRAIN_OPTIONS, "max_epochs": 1})

    model = scamort.Model(adata)
    original = model.module.loss_terms
    steps_per_epoch = int(np.ceil(0.9 * adata.n_obs / 128))
    calls = [0]

    def poisoned(batch, *args, **kwargs):
        terms = original(batch, *args, **kwargs)
        calls[0] += 1
        if calls[0] > steps_per_epoch and model.module.training:
            terms.reconstruction["rna"] = terms.reconstruction["rna"] * torch.nan
        return terms

    monkeypatch.setattr(model.module, "loss_terms", poisoned)
    with pytest.raises(NonFiniteLossError, match="Epoch 2 produced a non-finite loss"):
        model.train(**TRAIN_OPTIONS)
    for name, tensor in _weights(one_epoch).items():
        torch.testing.assert_close(_weights(model)[name], tensor, rtol=0, atol=0)


def test_a_last_step_that_breaks_the_weights_is_rolled_back() -> None:
    """One step per epoch: the loss is computed before the step that breaks the weights, so only the
    validation pass and the weights can tell; the model must keep finite weights."""
    model = scamort.Model(make_counts(n_cells=150))
    with pytest.raises(NonFiniteLossError, match="non-finite loss or weights"):
        model.train(max_epochs=5, lr=1e2, batch_size=256, lr_scaling="none", progress_bar=False)
    assert all(torch.isfinite(p).all() for p in model.module.parameters())
    assert np.isfinite(model.get_elbo())


def test_checkpoint_from_another_model_or_other_data_is_refused(tmp_path: Path) -> None:
    scamort.Model(make_counts(n_cells=120)).train(
        checkpoint_dir=tmp_path, **{**TRAIN_OPTIONS, "max_epochs": 2}
    )
    other_cells = scamort.Model(make_counts(n_cells=100, seed=5))
    with pytest.raises(scamort.InputError, match=r"belongs to another model or other data \(differs in: "):
        other_cells.train(checkpoint_dir=tmp_path, **{**TRAIN_OPTIONS, "max_epochs": 2})
    wider = scamort.Model(make_counts(n_cells=120), n_hidden=64)
    with pytest.raises(scamort.InputError, match=r"differs in: module"):
        wider.train(checkpoint_dir=tmp_path, **{**TRAIN_OPTIONS, "max_epochs": 2})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 2.5}, r"batch_size must be a whole number, got 2\.5"),
        ({"max_epochs": "3"}, r"max_epochs must be a whole number, got '3'"),
        ({"lr": "0.001"}, r"lr must be a finite number, got '0\.001'"),
        ({"weight_decay": float("inf")}, r"weight_decay must be a finite number, got inf"),
        ({"batch_size": True}, r"batch_size must be a whole number, got True"),
        ({"early_stopping_patience": 1.5}, r"early_stopping_patience must be a whole number"),
        ({"batch_size": -128, "lr_scaling": "sqrt"}, r"batch_size must be at least 1, got -128"),
        ({"lr": -1e-3, "batch_size": 256}, r"lr must be positive, got -0\.001\."),
    ],
)
def test_training_options_are_checked_as_given_before_any_work(options, message) -> None:
    with pytest.raises(scamort.InputError, match=message):
        scamort.Model(make_counts(n_cells=60, n_genes=10)).train(progress_bar=False, **options)


def test_extreme_but_valid_data_trains_without_nan() -> None:
    adata = make_counts(n_cells=200, n_genes=50)
    dense = adata.X.toarray()
    dense[0] = 0
    dense[0, 3] = 1  # a cell with a single count
    dense[1] *= 3000  # a cell with about a million counts
    dense[:, 7] = 0
    dense[5, 7] = 40  # a gene seen in one cell
    adata.X = sp.csr_matrix(dense)
    assert dense[1].sum() > 5e5
    for likelihood in ("nb", "zinb", "poisson"):
        model = scamort.Model(adata, likelihood=likelihood)
        with torch.no_grad():  # huge initial dispersions (theta = e^12)
            for decoder in model.module.decoders.values():
                if decoder.log_theta is not None:
                    decoder.log_theta.fill_(12.0)
        history = model.train(**{**TRAIN_OPTIONS, "max_epochs": 10})
        assert np.isfinite(history.drop(columns="seconds").to_numpy()).all()
        assert np.isfinite(model.get_latent_representation()).all()
        assert np.isfinite(model.get_elbo(return_mean=False)).all()


def test_same_seed_same_latent_and_different_seed_differs() -> None:
    def latent(seed: int) -> np.ndarray:
        model = scamort.Model(make_counts(n_cells=150), seed=seed)
        model.train(**{**TRAIN_OPTIONS, "max_epochs": 3})
        return model.get_latent_representation()

    np.testing.assert_array_equal(latent(5), latent(5))
    assert not np.allclose(latent(5), latent(6))


def test_checked_in_model_still_loads_and_gives_its_latent() -> None:
    """A model saved by scamort 0.1.0 (format 1): if this fails, a change broke loading old models."""
    adata = make_counts(n_cells=80, seed=11)
    model = scamort.Model.load(FIXTURE, adata)
    expected = np.load(FIXTURE.parent / "model_v1_latent.npy")
    np.testing.assert_allclose(model.get_latent_representation(), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- large counts (issue 18)
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from scipy import stats  # noqa: E402

from scamort.data.sparse_batch import SparseBatch  # noqa: E402
from scamort.data.validation import MAX_COUNT  # noqa: E402
from scamort.distributions import (  # noqa: E402
    NegativeBinomial,
    Poisson,
    SoftmaxNegativeBinomial,
    ZeroInflatedNegativeBinomial,
)

_COUNT = st.one_of(
    st.integers(0, 20),
    st.integers(0, MAX_COUNT),
    st.integers(0, 30).map(lambda e: min(2**e if e < 25 else MAX_COUNT, MAX_COUNT)),
    st.sampled_from([MAX_COUNT, MAX_COUNT - 1, 2**23 + 1, 10**7, 999_999]),
)


def _nb_oracle(x: np.ndarray, log_mu: np.ndarray, log_theta: np.ndarray) -> np.ndarray:
    mu, theta = np.exp(log_mu), np.exp(log_theta)
    return stats.nbinom.logpmf(x, theta, theta / (theta + mu))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    counts=st.lists(_COUNT, min_size=1, max_size=5),
    mu_offsets=st.lists(st.sampled_from([0.0, 0.0]) | st.floats(-3, 3), min_size=5, max_size=5),
    log_theta=st.floats(-3.0, 12.0),
    zi_logit=st.floats(-5.0, 5.0),
)
def test_likelihoods_are_exact_over_the_whole_count_range(counts, mu_offsets, log_theta, zi_logit) -> None:
    """Per-cell NB, ZINB, Poisson (and the fused softmax NB the decoders use) log-likelihoods of counts
    from 0 to MAX_COUNT match a float64 scipy oracle to 1e-4 relative, and are never positive. The mean
    sits at the count (offset 0, where the terms cancel most) or up to e^3 away from it."""
    x = np.asarray(counts, dtype=np.float64)[None, :]
    n = x.shape[1]
    log_mu = torch.tensor(np.log(np.maximum(x, 1.0)) + np.asarray(mu_offsets[:n]), dtype=torch.float32)
    log_theta_t = torch.full((n,), log_theta, dtype=torch.float32)
    zi = torch.full((1, n), zi_logit, dtype=torch.float32)
    batch = SparseBatch.from_dense(torch.tensor(x, dtype=torch.float32))
    lm, lt, zl = log_mu.double().numpy(), log_theta_t.double().numpy(), zi.double().numpy()
    nb = _nb_oracle(x, lm, lt)
    log_pi, log_not_pi = -np.logaddexp(0, -zl), -np.logaddexp(0, zl)
    zinb = np.where(x == 0, np.logaddexp(log_pi, log_not_pi + nb), log_not_pi + nb)
    # the fused softmax path: logits and a library that give the same means
    logits = log_mu - log_mu.max()
    log_library = torch.logsumexp(log_mu.double(), -1).float()
    soft_log_mu = torch.log_softmax(logits.double(), -1).numpy() + log_library.double().numpy()[:, None]
    cases = {
        "nb": (NegativeBinomial(log_mu, log_theta_t), nb),
        "zinb": (ZeroInflatedNegativeBinomial(log_mu, log_theta_t, zi), zinb),
        "poisson": (Poisson(log_mu), stats.poisson.logpmf(x, np.exp(lm))),
        "softmax nb": (
            SoftmaxNegativeBinomial(logits, log_library, log_theta_t),
            _nb_oracle(x, soft_log_mu, lt),
        ),
    }
    for name, (distribution, oracle) in cases.items():
        expected = oracle.sum(-1)
        ours = distribution.log_prob_rows(batch).double().numpy()
        assert ours.dtype == np.float64 and np.all(ours <= 0), (name, ours)
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6, err_msg=name)
        dense = distribution.log_prob(torch.tensor(x, dtype=torch.float32)).sum(-1).double().numpy()
        np.testing.assert_allclose(dense, expected, rtol=1e-4, atol=1e-6, err_msg=f"{name} (dense)")
