"""The pieces of ``benchmarks/gpu.py``, on the CPU (the device path with ``device = cpu``); the whole
``--dry-run`` is a slow test."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

import scamort
from tests.conftest import make_counts

ROOT = Path(__file__).resolve().parent.parent


def gpu_benchmark() -> ModuleType:
    """``benchmarks/gpu.py`` as a module."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("gpu")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_throughput_trains_the_module_on_device_resident_data() -> None:
    bench = gpu_benchmark()
    model = scamort.Model(make_counts(n_cells=300, seed=7))
    data = model._data.to(torch.device("cpu"))
    before = [p.detach().clone() for p in model.module.parameters()]
    result = bench.training_throughput(model.module, data, torch.arange(256), 64, warmup_steps=2, seconds=0.2)
    assert result["steps"] >= 1 and result["seconds"] >= 0.2
    assert result["cells_per_second"] == pytest.approx(
        result["steps"] * 64 / result["seconds"]
    )  # 4 full batches an epoch
    assert result["peak_device_memory_mb"] is None  # not CUDA
    assert any(not torch.equal(a, b) for a, b in zip(before, model.module.parameters(), strict=True))


def test_time_to_reach_and_goals() -> None:
    bench = gpu_benchmark()
    seconds, elbo = np.array([1.0, 2.0, 3.0]), np.array([-120.0, -100.0, -90.0])
    assert bench.time_to_reach(seconds, elbo, -100.0) == 2.0
    assert bench.time_to_reach(seconds, elbo, -80.0) is None
    throughput = {
        "128": {"cells_per_second": 9e5},
        "1024": {"cells_per_second": 4e5},
        "4096": {"cells_per_second": 6e5},
    }
    met = bench.goals(throughput, 0.05, 1_000_000)
    assert met["best_cells_per_second_batch_1024_or_more"] == 6e5
    assert met["cells_per_second_met"] is True and met["time_fraction_met"] is True
    assert bench.goals(throughput, 0.2, 1_000_000)["time_fraction_met"] is False
    assert bench.goals(throughput, None, 1_000_000)["time_fraction_met"] is False  # never reached
    small = bench.goals(throughput, 0.05, 3000)  # a dry run says nothing about the goals
    assert small["cells_per_second_met"] is None and small["time_fraction_met"] is None


def test_utilisation_off_cuda_is_null_with_a_reason() -> None:
    bench = gpu_benchmark()
    with bench.UtilisationSampler(torch.device("cpu"), interval=0.01) as sampler:
        pass
    summary = sampler.summary()
    assert summary["mean_percent"] is None and summary["n_samples"] == 0
    assert "no CUDA device" in summary["reason"]


@pytest.mark.slow
def test_dry_run_writes_every_measurement(tmp_path: Path) -> None:
    out = tmp_path / "gpu_dry_run.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    result = json.loads(out.read_text())
    assert set(result["throughput"]) >= {"128", "1024", "4096", "device_data_mb"}
    assert all(result["throughput"][b]["cells_per_second"] > 0 for b in ("128", "1024", "4096"))
    budget = result["budget"]
    assert np.isfinite(budget["scamort"]["heldout_elbo"]) and np.isfinite(budget["scvi"]["heldout_elbo"])
    assert len(budget["scamort"]["heldout_elbo_per_epoch"]) == budget["scamort"]["epochs_run"]
    assert result["goals"]["cells_per_second_met"] is None  # tiny sizes: no verdict
    assert result["throughput"]["128"]["gpu_utilisation"]["reason"].startswith("no CUDA device")
