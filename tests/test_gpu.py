"""GPU training (skipped without CUDA): same model, same quality, weights on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scamort
from tests.conftest import make_counts

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_cuda_training_matches_cpu_quality() -> None:
    adata = make_counts(n_cells=2000, seed=3)
    options = {"max_epochs": 20, "early_stopping": False, "progress_bar": False}
    on_gpu = scamort.Model(adata, seed=0)
    gpu_history = on_gpu.train(device="cuda", **options)
    assert on_gpu.device.type == "cuda"
    on_cpu = scamort.Model(adata, seed=0)
    cpu_history = on_cpu.train(device="cpu", **options)
    gpu_elbo, cpu_elbo = gpu_history["validation_elbo"].iloc[-1], cpu_history["validation_elbo"].iloc[-1]
    assert abs(gpu_elbo - cpu_elbo) < 0.01 * abs(cpu_elbo)
    assert np.isfinite(on_gpu.get_latent_representation()).all()
