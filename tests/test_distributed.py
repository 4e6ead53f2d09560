"""Two-process DistributedDataParallel training on CPU (gloo), launched with torchrun."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import scamort
from tests.conftest import make_counts

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = {"max_epochs": 12, "kl_warmup_epochs": 3, "early_stopping": False, "progress_bar": False}


def _train_on_two_ranks(tmp_path: Path, body: str, port: int) -> list[dict[str, torch.Tensor]]:
    """Run ``body`` (which saves ``model``'s weights as ``rank{RANK}.pt`` in ``sys.argv[1]``) under
    torchrun with two CPU processes; return both ranks' weights."""
    script = tmp_path / "train_ddp.py"
    header = f"""
        import os, sys
        import numpy as np, torch
        sys.path.insert(0, {str(ROOT)!r})
        import scamort
        torch.set_num_threads(1)
        """
    script.write_text(textwrap.dedent(header) + textwrap.dedent(body))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    subprocess.run([*command, str(script), str(tmp_path)], check=True, timeout=300)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def _assert_identical(weights: list[dict[str, torch.Tensor]]) -> None:
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=0, atol=0)


def test_two_ranks_end_with_identical_weights_and_train_as_well(tmp_path: Path) -> None:
    body = f"""
        from tests.conftest import make_counts

        model = scamort.Model(make_counts(n_cells=400, seed=4), seed=1)
        history = model.train(batch_size=64, **{OPTIONS!r})  # 2 ranks x 64 = one batch of 128
        rank = int(os.environ["RANK"])
        torch.save(model.module.state_dict(), sys.argv[1] + f"/rank{{rank}}.pt")
        np.save(sys.argv[1] + f"/latent{{rank}}.npy", model.get_latent_representation())
        history.to_csv(sys.argv[1] + f"/history{{rank}}.csv")
        """
    _assert_identical(_train_on_two_ranks(tmp_path, body, port=29517))
    latent = np.load(tmp_path / "latent0.npy")
    assert np.isfinite(latent).all()
    np.testing.assert_array_equal(np.load(tmp_path / "latent1.npy"), latent)

    single = scamort.Model(make_counts(n_cells=400, seed=4), seed=1)
    single_history = single.train(**OPTIONS)
    assert latent.shape == single.get_latent_representation().shape

    ddp_history = pd.read_csv(tmp_path / "history0.csv")
    # each rank takes as many steps per epoch as the single process: the KL warm-up ends as early
    np.testing.assert_allclose(ddp_history["kl_weight"], single_history["kl_weight"])
    ddp_elbo = ddp_history["validation_elbo"].iloc[-1]
    single_elbo = single_history["validation_elbo"].iloc[-1]
    first_elbo = single_history["validation_elbo"].iloc[0]
    # the same number of steps of the same global batch size: the same quality within a small margin
    assert abs(ddp_elbo - single_elbo) < 0.1 * (single_elbo - first_elbo), (ddp_elbo, single_elbo, first_elbo)


def test_two_ranks_train_an_unpaired_multimodal_model_with_pretraining(tmp_path: Path) -> None:
    """Some weights get no gradient in some steps (the presence-pattern classifier in a minibatch of one
    pattern; the whole RNA encoder, frozen, in the second stage): both ranks still end identical."""
    body = """
        from tests.test_multimodal import make_cite, split_mudata, thirds

        adata = make_cite(n_cells=150, seed=3)
        model = scamort.Model(
            split_mudata(adata, thirds(adata.n_obs)),
            modalities={"rna": scamort.Modality(), "prot": scamort.Modality()},
            batch_key="batch", n_latent=4, n_hidden=32, seed=1,
        )
        history = model.train(batch_size=32, max_epochs=3, progress_bar=False, pretrain_modality="rna")
        assert list(history["stage"]) == ["pretrain"] * 3 + ["all"] * 3
        torch.save(model.module.state_dict(), sys.argv[1] + f"/rank{os.environ['RANK']}.pt")
        """
    weights = _train_on_two_ranks(tmp_path, body, port=29518)
    assert all(torch.isfinite(tensor).all() for tensor in weights[0].values())
    _assert_identical(weights)
