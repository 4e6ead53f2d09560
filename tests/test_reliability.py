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
