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


def test_device_resident_minibatches_match_the_cpu_ones() -> None:
    # the whole CSR on the device once; every minibatch gathered there equals the CPU one
    model = scamort.Model(make_counts(n_cells=500, seed=5))
    on_cpu = model._data
    on_gpu = on_cpu.to("cuda")
    assert on_gpu.modalities["rna"].values.device.type == "cuda"
    order = torch.randperm(500, generator=torch.Generator().manual_seed(1))
    for cpu_batch, gpu_batch in zip(on_cpu.iterate(order, 64), on_gpu.iterate(order.cuda(), 64), strict=True):
        for name in ("row", "col", "values", "row_offsets", "log_factorial"):
            got = getattr(gpu_batch.modalities["rna"].counts, name)
            assert got.device.type == "cuda"
            assert torch.equal(got.cpu(), getattr(cpu_batch.modalities["rna"].counts, name)), name


def test_gpu_benchmark_throughput_on_cuda() -> None:
    from tests.test_gpu_benchmark import gpu_benchmark

    bench = gpu_benchmark()
    data = scamort.Model(make_counts(n_cells=2000, seed=6))._data.to("cuda")
    module = scamort.Model(make_counts(n_cells=2000, seed=6)).module
    index = torch.arange(1800, device="cuda")
    result = bench.training_throughput(module, data, index, 256, warmup_steps=3, seconds=0.5)
    assert result["steps"] > 3 and result["cells_per_second"] > 0
    assert result["peak_device_memory_mb"] > 0
