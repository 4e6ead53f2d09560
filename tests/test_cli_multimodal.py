"""The command line with several modalities: CITE-seq in one AnnData, and an unpaired MuData."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pytest
import scipy.sparse as sp

from scamort.cli import main
from tests.conftest import make_counts


def _cite(path: Path) -> Path:
    adata = make_counts(n_cells=120, seed=8)
    protein = make_counts(n_cells=120, n_genes=12, seed=9).X.toarray()
    adata.obsm["protein"] = protein
    adata.write_h5ad(path)
    return path


def test_fit_cite_seq_with_protein_in_obsm(tmp_path: Path, capsys) -> None:
    source = _cite(tmp_path / "cite.h5ad")
    code = main(
        [
            "fit",
            str(source),
            "--out",
            str(tmp_path / "out.h5ad"),
            "--modality",
            "rna=nb",
            "--modality",
            "prot=nb,obsm=protein",
            "--epochs",
            "2",
            "--no-progress",
            "--model-dir",
            str(tmp_path / "model"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert ad.read_h5ad(tmp_path / "out.h5ad").obsm["X_scamort"].shape == (120, 10)
    assert main(["embed", str(tmp_path / "model"), str(source), "--out", str(tmp_path / "again.csv")]) == 0


def test_fit_unpaired_mudata(tmp_path: Path, capsys) -> None:
    rna = make_counts(n_cells=90, seed=8)
    protein = make_counts(n_cells=90, n_genes=10, seed=9)
    protein.var_names = [f"prot{i}" for i in range(10)]
    mdata = md.MuData({"rna": rna[:60].copy(), "prot": protein[30:].copy()})
    mdata.write(tmp_path / "cells.h5mu")
    code = main(
        [
            "fit",
            str(tmp_path / "cells.h5mu"),
            "--out",
            str(tmp_path / "out.h5mu"),
            "--modality",
            "rna=nb",
            "--modality",
            "prot=nb",
            "--epochs",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    written = md.read_h5mu(tmp_path / "out.h5mu")
    assert written.obsm["X_scamort"].shape == (90, 10)
    assert np.isfinite(written.obsm["X_scamort"]).all()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rna", "is not NAME=LIKELIHOOD"),
        ("rna=gaussian", "Unknown likelihood 'gaussian'"),
        ("rna=nb,colour=red", "unknown modality option 'colour=red'"),
    ],
)
def test_bad_modality_specs_give_one_line(tmp_path: Path, capsys, spec: str, message: str) -> None:
    source = _cite(tmp_path / "cite.h5ad")
    code = main(["fit", str(source), "--out", str(tmp_path / "o.h5ad"), "--modality", spec])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "flags"),
    [(["--layer", "counts"], "--layer"), (["--likelihood", "zinb"], "--likelihood")],
)
def test_single_modality_options_with_modality_specs_give_one_line(
    tmp_path: Path, capsys, extra: list[str], flags: str
) -> None:
    source = _cite(tmp_path / "cite.h5ad")
    out = tmp_path / "o.h5ad"
    code = main(["fit", str(source), "--out", str(out), "--modality", "rna=nb", *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{flags} applies only without --modality" in err and "rna=zinb,layer=counts" in err
    assert not out.exists()


def test_unknown_mudata_modality_is_one_line(tmp_path: Path, capsys) -> None:
    rna = make_counts(n_cells=30)
    md.MuData({"rna": rna}).write(tmp_path / "m.h5mu")
    code = main(
        ["fit", str(tmp_path / "m.h5mu"), "--out", str(tmp_path / "o.h5mu"), "--modality", "atac=bernoulli"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Modality 'atac' is not in the MuData (it has rna)" in err


def test_mudata_errors_in_a_real_process_are_one_line(tmp_path: Path) -> None:
    """Reading an .h5mu prints no mudata FutureWarning: the error is the only line on stderr."""
    md.MuData({"rna": make_counts(n_cells=30)}).write(tmp_path / "m.h5mu")
    command = [
        "fit",
        str(tmp_path / "m.h5mu"),
        "--out",
        str(tmp_path / "o.h5mu"),
        "--modality",
        "atac=bernoulli",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "scamort.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "scamort: error: Modality 'atac' is not in the MuData (it has rna)."
    ], result.stderr


def test_sparse_protein_counts_work_too(tmp_path: Path) -> None:
    adata = make_counts(n_cells=60, seed=2)
    adata.obsm["protein"] = sp.csr_matrix(make_counts(n_cells=60, n_genes=5, seed=3).X)
    adata.write_h5ad(tmp_path / "s.h5ad")
    args = ["fit", str(tmp_path / "s.h5ad"), "--out", str(tmp_path / "o.csv"), "--epochs", "1"]
    assert main([*args, "--modality", "rna=nb", "--modality", "prot=nb,obsm=protein", "--no-progress"]) == 0


def test_fit_with_pretraining_and_a_bad_pretrain_modality(tmp_path: Path, capsys) -> None:
    path = _cite(tmp_path / "cite.h5ad")
    specs = ["--modality", "rna=nb", "--modality", "prot=nb,obsm=protein"]
    common = ["fit", str(path), *specs, "--epochs", "2", "--no-progress"]
    code = main([*common, "--out", str(tmp_path / "out.h5ad"), "--pretrain-modality", "rna"])
    assert code == 0, capsys.readouterr().err
    assert ad.read_h5ad(tmp_path / "out.h5ad").obsm["X_scamort"].shape == (120, 10)
    capsys.readouterr()
    code = main([*common, "--out", str(tmp_path / "bad.h5ad"), "--pretrain-modality", "atac"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "pretrain_modality='atac' is not supported; choose one of rna, prot" in err
    assert not (tmp_path / "bad.h5ad").exists()


def test_fit_with_a_protein_panel_mask(tmp_path: Path, capsys) -> None:
    import scamort
    from tests.test_feature_masks import HIDDEN, make_cite

    adata = make_cite()
    in_b1 = adata.obs["batch"] == "b1"
    parts = {}
    for name, rows in (("b0", ~in_b1), ("b1", in_b1)):
        part = adata[rows.to_numpy()]
        piece = ad.AnnData(part.X.copy(), obs=part.obs[["cell_type"]].copy(), var=part.var[[]])
        protein = part.obsm["protein"]
        piece.obsm["protein"] = protein.drop(columns=HIDDEN) if name == "b1" else protein.copy()
        parts[name] = piece
    scamort.pp.concat_panels(parts, obsm_keys=["protein"]).write_h5ad(tmp_path / "panels.h5ad")
    spec = "prot=nbmixture,obsm=protein,measured=protein_measured"
    arguments = ["fit", str(tmp_path / "panels.h5ad"), "--out", str(tmp_path / "out.h5ad")]
    arguments += ["--batch-key", "batch", "--modality", "rna=nb", "--modality", spec]
    arguments += ["--epochs", "2", "--no-progress", "--model-dir", str(tmp_path / "model")]
    code = main(arguments)
    assert code == 0, capsys.readouterr().err
    assert ad.read_h5ad(tmp_path / "out.h5ad").obsm["X_scamort"].shape == (adata.n_obs, 10)
    loaded = scamort.Model.load(tmp_path / "model", ad.read_h5ad(tmp_path / "panels.h5ad"))
    assert loaded.registry.modality("prot").modality.measured_key == "protein_measured"
