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


_TRAIN_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import torch
    import scamort
    import scamort.train.loop as loop
    from tests.conftest import make_counts

    checkpoint_dir, out, die_in_epoch = sys.argv[1] or None, sys.argv[2], int(sys.argv[3])
    original, calls = loop._evaluate, [0]

    def dying(*args, **kwargs):
        calls[0] += 1
        if calls[0] == die_in_epoch:  # after this epoch's training steps, before its checkpoint
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    loop._evaluate = dying
    model = scamort.Model(make_counts(n_cells=300), seed=3)
    history = model.train(checkpoint_dir=checkpoint_dir, **{options!r})
    torch.save({{"weights": model.module.state_dict(), "history": history.drop(columns="seconds")}}, out)
    """
)


def _train_in_fresh_process(checkpoint_dir: Path | None, out: Path, die_in_epoch: int = 0) -> int:
    """Train the reliability model in a new interpreter (so every run starts from the same process
    state: threads, allocator); returns the exit code."""
    script = _TRAIN_SCRIPT.format(root=str(ROOT), options=TRAIN_OPTIONS)
    command = [sys.executable, "-c", script, str(checkpoint_dir or ""), str(out), str(die_in_epoch)]
    return subprocess.run(command, check=False).returncode


def test_killed_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    assert _train_in_fresh_process(None, tmp_path / "reference.pt") == 0
    checkpoints = tmp_path / "checkpoints"
    assert _train_in_fresh_process(checkpoints, tmp_path / "never.pt", die_in_epoch=4) == -9
    saved = torch.load(checkpoints / "checkpoint.pt", weights_only=True)
    assert saved["progress"]["epoch"] == 3

    assert _train_in_fresh_process(checkpoints, tmp_path / "resumed.pt") == 0
    reference = torch.load(tmp_path / "reference.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=False)
    for name, tensor in reference["weights"].items():
        torch.testing.assert_close(resumed["weights"][name], tensor, rtol=0, atol=0)
    pd.testing.assert_frame_equal(resumed["history"], reference["history"])


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


# ---------------------------------------------------------------- checkpoints (issue 18)
import shutil  # noqa: E402

from tests.snapshot import assert_refused, deny_writing  # noqa: E402

CKPT_OPTIONS = {"max_epochs": 1, "kl_warmup_epochs": 1, "early_stopping": False, "progress_bar": False}


def _ckpt_data():
    """40 cells x 8 genes with batches and a continuous covariate."""
    adata = make_counts(n_cells=40, n_genes=8, seed=9)
    adata.obs["depth"] = np.linspace(0.0, 1.0, adata.n_obs)
    return adata


def _ckpt_model(adata) -> scamort.Model:
    return scamort.Model(
        adata, batch_key="batch", continuous_covariate_keys=["depth"], n_hidden=16, n_latent=2
    )


@pytest.fixture(scope="module")
def finished_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoint")
    _ckpt_model(_ckpt_data()).train(checkpoint_dir=folder, **CKPT_OPTIONS)
    return folder / "checkpoint.pt"


def _fresh_copy(finished_checkpoint: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(finished_checkpoint, folder / "checkpoint.pt")
    return folder


def _edit_checkpoint(edit):
    def apply(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        edit(state)
        torch.save(state, path)

    return apply


def _swap_rows(adata):
    return adata[np.r_[1, 0, 2 : adata.n_obs]].copy()


def _rename_cell(adata):
    adata.obs_names = [*adata.obs_names[:-1], "renamed"]
    return adata


def _relabel_batch(adata):
    adata.obs["batch"] = adata.obs["batch"].astype(str)
    adata.obs.iloc[0, adata.obs.columns.get_loc("batch")] = (
        "b1" if adata.obs["batch"].iloc[0] == "b0" else "b0"
    )
    return adata


def _move_a_count(adata):
    dense = adata.X.toarray()
    row = int(np.flatnonzero(dense[:, 0] > 0)[0])
    dense[row, 0] -= 1
    dense[row, 1] += 1  # same total, same number of entries or one more
    adata.X = sp.csr_matrix(dense)
    return adata


def _shift_covariate(adata):
    adata.obs["depth"] = adata.obs["depth"][::-1].to_numpy()
    return adata


FINGERPRINT_CASES = {
    "cells reordered": (_swap_rows, r"differs in: .*cells"),
    "a cell renamed": (_rename_cell, r"differs in: cells\)"),
    "a batch label corrected": (_relabel_batch, r"differs in: batch"),
    "a count moved to another gene": (_move_a_count, r"differs in: counts_rna\)"),
    "a continuous covariate changed": (_shift_covariate, r"differs in: covariates\)"),
}


@pytest.mark.parametrize("case", list(FINGERPRINT_CASES))
def test_a_checkpoint_of_other_data_is_refused_not_resumed(case, finished_checkpoint, tmp_path) -> None:
    change, pattern = FINGERPRINT_CASES[case]
    folder = _fresh_copy(finished_checkpoint, tmp_path)
    adata = change(_ckpt_data())
    model = _ckpt_model(adata)
    assert_refused(
        lambda: model.train(checkpoint_dir=folder, **CKPT_OPTIONS),
        scamort.InputError,
        r"The checkpoint in .*ckpt belongs to another model or other data \(" + pattern,
        adata,
    )
    assert not model.is_trained


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _text(path: Path) -> None:
    path.write_text("not a checkpoint")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _drop(key: str):
    return _edit_checkpoint(lambda state: state.pop(key))


def _wrong_shape(state) -> None:
    name = next(k for k, v in state["module"].items() if v.dim() == 2)
    state["module"][name] = state["module"][name][:, :1].clone()


def _nan_weight(state) -> None:
    name = next(k for k, v in state["module"].items() if v.is_floating_point())
    state["module"][name] = state["module"][name].clone().fill_(float("nan"))


DAMAGED_CHECKPOINTS = {
    "cut short": (_truncate, r"checkpoint\.pt is damaged \(200 bytes: cut short"),
    "replaced by text": (_text, r"checkpoint\.pt is damaged \(16 bytes"),
    "empty": (_empty, r"checkpoint\.pt is empty; delete it to start over"),
    "not a dict": (lambda p: torch.save([1, 2], p), r"checkpoint\.pt is not a scamort checkpoint"),
    "no module entry": (_drop("module"), r"checkpoint\.pt lacks entry 'module'"),
    "no fingerprint entry": (_drop("fingerprint"), r"checkpoint\.pt lacks entry 'fingerprint'"),
    "stopped is text": (
        _edit_checkpoint(lambda s: s.__setitem__("stopped", "no")),
        r"checkpoint\.pt has a wrong-typed entry 'stopped'",
    ),
    "rng state is a list": (
        _edit_checkpoint(lambda s: s.__setitem__("torch_rng", [1, 2])),
        r"wrong-typed entry 'torch_rng'",
    ),
    "optimizer state damaged": (
        _edit_checkpoint(lambda s: s.__setitem__("optimizer", {"state": 3})),
        r"checkpoint\.pt has a damaged optimizer state",
    ),
    "a weight of the wrong shape": (
        _edit_checkpoint(_wrong_shape),
        r"checkpoint\.pt does not fit the model: '",
    ),
    "a weight that is NaN": (_edit_checkpoint(_nan_weight), r"holds non-finite values"),
}


@pytest.mark.parametrize("case", list(DAMAGED_CHECKPOINTS))
def test_a_damaged_checkpoint_is_refused_in_one_sentence(case, finished_checkpoint, tmp_path) -> None:
    damage, pattern = DAMAGED_CHECKPOINTS[case]
    folder = _fresh_copy(finished_checkpoint, tmp_path)
    damage(folder / "checkpoint.pt")
    adata = _ckpt_data()
    model = _ckpt_model(adata)
    assert_refused(
        lambda: model.train(checkpoint_dir=folder, **CKPT_OPTIONS), scamort.InputError, pattern, adata
    )


@pytest.mark.parametrize("case", ["a file", "inside a file", "read-only folder", "in a read-only folder"])
def test_an_unusable_checkpoint_dir_is_refused_before_the_first_epoch(case, tmp_path, monkeypatch) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("keep")
    locked = tmp_path / "locked"
    locked.mkdir()
    target, pattern = {
        "a file": (afile, r"checkpoint_dir .*notes\.txt is a file, not a folder"),
        "inside a file": (afile / "ckpt", r"checkpoint_dir .*notes\.txt/ckpt: .*notes\.txt is a file"),
        "read-only folder": (locked, r"checkpoint_dir .*locked cannot be written: it is not writable"),
        "in a read-only folder": (
            locked / "new" / "ckpt",
            r"checkpoint_dir .*locked/new/ckpt cannot be written: its folder .*locked is not writable",
        ),
    }[case]
    deny_writing(monkeypatch, locked)
    adata = _ckpt_data()
    model = _ckpt_model(adata)
    assert_refused(
        lambda: model.train(checkpoint_dir=target, **CKPT_OPTIONS), scamort.InputError, pattern, adata
    )
    assert afile.read_text() == "keep" and list(locked.iterdir()) == []
