"""The bundled datasets: raw counts with their labels, loadable from an installed wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

import scamort

ROOT = Path(__file__).resolve().parent.parent


def _is_raw_counts(matrix) -> bool:
    data = matrix.data
    return bool((data >= 0).all() and (data == np.round(data)).all() and data.max() > 1)


def test_worm_neurons_are_raw_counts_with_labels() -> None:
    adata = scamort.datasets.worm_neurons()
    assert adata.shape == (4186, 13488)
    assert _is_raw_counts(adata.X)
    assert adata.obs["label"].nunique() == 10


def test_bmmc_cite_has_rna_protein_and_batches() -> None:
    adata = scamort.datasets.bmmc_cite()
    assert adata.shape == (600, 1000)
    assert _is_raw_counts(adata.X)
    protein = adata.obsm["protein_expression"]
    assert isinstance(protein, pd.DataFrame) and protein.shape == (600, 134)
    assert adata.obs["batch"].nunique() == 2 and adata.obs["cell_type"].nunique() == 41


def test_bmmc_multiome_is_a_paired_mudata_of_rna_and_atac_counts() -> None:
    mdata = scamort.datasets.bmmc_multiome()
    assert set(mdata.mod) == {"rna", "atac"}
    rna, atac = mdata.mod["rna"], mdata.mod["atac"]
    assert rna.shape == (500, 600) and atac.shape == (500, 600)
    assert (rna.obs_names == atac.obs_names).all() and (mdata.obs_names == rna.obs_names).all()
    assert _is_raw_counts(rna.X) and _is_raw_counts(atac.X)  # fragment counts, not binarised
    assert mdata.obs["cell_type"].nunique() == 21 and mdata.obs["batch"].nunique() == 2
    assert (mdata.obs["cell_type"].to_numpy() == rna.obs["cell_type"].to_numpy()).all()


def test_datasets_load_from_an_installed_wheel(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("scamort-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "scamort/_bundled/worm_neuron_cao2017_4186.h5ad" in names
    assert "scamort/_bundled/README.md" in names
    assert "scamort/_bundled/bmmc_multiome_starter.atac.h5ad" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    script = (
        "import scamort, pathlib; "
        "p = scamort.datasets.bundled_path('bmmc_cite_starter.rna_protein.h5ad'); "
        "assert pathlib.Path(scamort.__file__).parent in p.parents, p; "
        "print(scamort.datasets.bmmc_cite().shape, scamort.datasets.bmmc_multiome().shape)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "(600, 1000) (500, 1200)" in result.stdout
