"""Every kind of bad input is refused with one clear sentence, before any work, and nothing is modified."""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import scamort
from scamort import InputError
from tests.conftest import make_counts
from tests.snapshot import assert_unchanged as assert_deeply_unchanged
from tests.snapshot import take


def snapshot(adata: ad.AnnData) -> dict:
    """Everything users keep in ``adata``, to compare after scamort has seen it (tests/snapshot.py)."""
    return take(adata)


def assert_unchanged(adata: ad.AnnData, before: dict) -> None:
    """Everything users keep in an AnnData is exactly as it was (deeply: tests/snapshot.py)."""
    assert_deeply_unchanged(adata, before)


def _with_value(adata: ad.AnnData, value: float, where=(3, 2)) -> ad.AnnData:
    dense = adata.X.toarray()
    dense[where] = value
    adata.X = sp.csr_matrix(dense)
    return adata


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2.5, r"adata.X has 1 non-integer entries \(first at cell 'cell3', feature 'gene2'\)"),
        (-1.0, r"adata.X has 1 negative entries \(first at cell 'cell3', feature 'gene2'\)"),
        (np.nan, r"adata.X has 1 NaN or infinite entries"),
        (np.inf, r"adata.X has 1 NaN or infinite entries"),
    ],
)
def test_bad_values_are_refused_with_location(value: float, message: str) -> None:
    adata = _with_value(make_counts(), value)
    before = snapshot(adata)
    with pytest.raises(InputError, match=message):
        scamort.Model(adata)
    assert_unchanged(adata, before)


def test_dense_input_is_checked_too() -> None:
    adata = make_counts(sparse=False)
    adata.X[0, 0] = 0.5
    with pytest.raises(InputError, match="non-integer"):
        scamort.Model(adata)


def test_empty_cells_are_counted_and_the_fix_is_named() -> None:
    adata = make_counts()
    dense = adata.X.toarray()
    dense[[4, 9]] = 0
    adata.X = sp.csr_matrix(dense)
    with pytest.raises(InputError, match=r"2 cells have zero total counts \(e.g. 'cell4'\).*filter_cells"):
        scamort.Model(adata)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layer": "raw"}, r"layer 'raw' not found in adata.layers \(available: 'counts'\)"),
        ({"batch_key": "donor"}, r"batch_key 'donor' is not a column of adata.obs"),
        ({"labels_key": "celltype"}, r"labels_key 'celltype' is not a column"),
        ({"categorical_covariate_keys": ["nope"]}, r"Categorical covariate 'nope' is not a column"),
        ({"continuous_covariate_keys": ["cell_type"]}, r"must be numeric"),
        ({"likelihood": "gaussian"}, r"likelihood='gaussian' is not supported"),
        ({"dispersion": "cell"}, r"dispersion='cell' is not supported"),
        ({"n_latent": 0}, r"n_latent must be an integer >= 1"),
        ({"dropout_rate": 1.5}, r"dropout_rate must be a number in \[0, 1\), got 1.5"),
        ({"dropout_rate": "0.1"}, r"dropout_rate must be a number in \[0, 1\), got .0.1."),
        ({"n_latent": True}, r"n_latent must be an integer >= 1, got True"),
        ({"seed": False}, r"seed must be an integer >= 0, got False"),
        ({"mixing_weight": True}, r"mixing_weight must be a finite number >= 0, got True"),
        ({"panel_mixing_weight": -1.0}, r"panel_mixing_weight must be a finite number >= 0, got -1.0"),
        ({"alignment_weight": float("nan")}, r"alignment_weight must be a finite number >= 0, got nan"),
    ],
)
def test_unknown_keys_and_options_are_refused(counts_adata, kwargs, message) -> None:
    before = snapshot(counts_adata)
    with pytest.raises(InputError, match=message):
        scamort.Model(counts_adata, **kwargs)
    assert_unchanged(counts_adata, before)


def test_batch_column_with_missing_values_is_refused(counts_adata) -> None:
    counts_adata.obs["batch"] = counts_adata.obs["batch"].astype(object)
    counts_adata.obs.iloc[7, counts_adata.obs.columns.get_loc("batch")] = np.nan
    with pytest.raises(InputError, match=r"batch_key 'batch' has 1 missing \(NaN\) values"):
        scamort.Model(counts_adata, batch_key="batch")


def test_too_few_cells_for_the_validation_split() -> None:
    model = scamort.Model(make_counts(n_cells=4))
    with pytest.raises(InputError, match="leaves no validation cell out of 4"):
        model.train(max_epochs=1, progress_bar=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_epochs": 0}, "max_epochs must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"train_size": 1.5}, r"train_size must be in \(0, 1\]"),
        ({"lr": -1.0}, "lr must be positive"),
        ({"lr": True}, "lr must be a finite number, got True"),
        ({"max_seconds": True}, "max_seconds must be a positive number or None, got True"),
        ({"max_seconds": float("nan")}, "max_seconds must be a positive number or None, got nan"),
        ({"device": "tpu"}, "Unknown device 'tpu'"),
    ],
)
def test_bad_training_options(counts_adata, kwargs, message) -> None:
    model = scamort.Model(counts_adata)
    with pytest.raises(InputError, match=message):
        model.train(**{"max_epochs": 1, "progress_bar": False, **kwargs})
    assert not model.is_trained


def test_model_and_train_leave_the_anndata_untouched(counts_adata) -> None:
    counts_adata.obsm["X_pca"] = np.ones((counts_adata.n_obs, 2))
    counts_adata.uns["note"] = "keep me"
    before = snapshot(counts_adata)
    model = scamort.Model(counts_adata, layer="counts", batch_key="batch")
    model.train(max_epochs=2, progress_bar=False)
    model.get_latent_representation()
    model.get_elbo()
    assert_unchanged(counts_adata, before)


def test_query_with_unseen_batch_or_missing_genes(counts_adata) -> None:
    model = scamort.Model(counts_adata, batch_key="batch")
    query = make_counts(n_cells=20, seed=3)
    query.obs["batch"] = "b7"
    with pytest.raises(InputError, match=r"categories the model was not trained on \('b7'\)"):
        model.get_latent_representation(query)
    with pytest.raises(InputError, match="lacks 5 of the model's 60 features"):
        model.get_latent_representation(make_counts(n_cells=20)[:, 5:])


# ======================================================================= issue 18: a hostile battery
# Every case below: the exception type, a message naming what is at fault, no optimiser step, and the
# user's objects deeply unchanged (tests/snapshot.py).
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from scamort.cli import main as cli_main  # noqa: E402
from scamort.data.validation import MAX_COUNT  # noqa: E402
from tests.snapshot import assert_refused, deny_writing  # noqa: E402

TRAIN = {"max_epochs": 1, "progress_bar": False}


def _tiny(n_cells: int = 30, n_genes: int = 8, **kwargs) -> ad.AnnData:
    return make_counts(n_cells=n_cells, n_genes=n_genes, **kwargs)


def _set_entry(adata: ad.AnnData, value, dtype, where=(3, 2), layer: str | None = None) -> ad.AnnData:
    dense = adata.X.toarray().astype(dtype)
    dense[where] = value
    if layer is None:
        adata.X = sp.csr_matrix(dense)
    else:
        adata.layers[layer] = sp.csr_matrix(dense)
    return adata


def _with_protein(values: dict) -> ad.AnnData:
    adata = _tiny()
    table = pd.DataFrame({"CD3": np.arange(adata.n_obs) % 5 + 1, "CD4": np.ones(adata.n_obs)})
    for column, value in values.items():
        table[column] = value
    table.index = adata.obs_names
    adata.obsm["protein"] = table
    return adata


def _two_modalities(adata: ad.AnnData) -> dict:
    return {"rna": scamort.Modality(), "prot": scamort.Modality(obsm_key="protein")}


def _case_count_above_range_int64():
    adata = _set_entry(_tiny(), 2**31 + 1, np.int64)
    return (
        (lambda: scamort.Model(adata)),
        r"adata\.X has 1 entries above 16,777,216 .*'cell3', feature 'gene2'",
        [adata],
    )


def _case_count_1e39_dense():
    adata = _tiny(sparse=False)
    adata.X = adata.X.astype(np.float64)
    adata.X[5, 1] = 1e39
    return (lambda: scamort.Model(adata)), r"adata\.X has 1 entries above 16,777,216.*'cell5'", [adata]


def _case_count_just_above_range_in_layer():
    adata = _set_entry(_tiny(), MAX_COUNT + 1, np.float64, layer="counts")
    return (
        (lambda: scamort.Model(adata, layer="counts")),
        r"adata\.layers\['counts'\] has 1 entries above",
        [adata],
    )


def _case_count_above_range_in_protein_table():
    adata = _with_protein({"CD4": np.r_[2.0**25, np.ones(29)]})
    return (
        (lambda: scamort.Model(adata, modalities=_two_modalities(adata))),
        r"adata\.obsm\['protein'\] has 1 entries above .*feature 'CD4'",
        [adata],
    )


def _case_count_above_range_at_query():
    model = scamort.Model(_tiny())
    query = _set_entry(_tiny(seed=2), 2**40, np.float64)
    return (
        (lambda: model.get_latent_representation(query)),
        r"adata\.X has 1 entries above",
        [query, model.adata],
    )


def _case_batch_int_and_text():
    adata = _tiny()
    adata.obs["batch"] = pd.Series([1, "1", 2] * 10, index=adata.obs_names, dtype=object)
    return (
        (lambda: scamort.Model(adata, batch_key="batch")),
        r"batch_key 'batch' holds values of different types that read as the same category \(1 \(int\) and "
        r"'1' \(str\)\)",
        [adata],
    )


def _case_covariate_int_and_text():
    adata = _tiny()
    adata.obs["donor"] = pd.Series(["7", 7, 8] * 10, index=adata.obs_names, dtype=object)
    return (
        (lambda: scamort.Model(adata, categorical_covariate_keys=["donor"])),
        r"Categorical covariate 'donor' holds values of different types",
        [adata],
    )


def _case_labels_int_and_text():
    adata = _tiny()
    adata.obs["label"] = pd.Series([0, "0", "a"] * 10, index=adata.obs_names, dtype=object)
    return (
        (lambda: scamort.Model(adata, labels_key="label")),
        r"labels_key 'label' holds values of different",
        [adata],
    )


def _case_categorical_dtype_with_int_and_text_categories():
    adata = _tiny()
    adata.obs["batch"] = pd.Categorical([1, "1"] * 15, categories=[1, "1"])
    return (
        (lambda: scamort.Model(adata, batch_key="batch")),
        r"batch_key 'batch' holds values of different",
        [adata],
    )


def _case_batch_bool_and_text():
    adata = _tiny()
    adata.obs["batch"] = pd.Series([True, "True", False] * 10, index=adata.obs_names, dtype=object)
    return (lambda: scamort.Model(adata, batch_key="batch")), r"\(True \(bool\) and 'True' \(str\)\)", [adata]


def _case_batch_float_and_text():
    adata = _tiny()
    adata.obs["batch"] = pd.Series([np.float64(2.0), "2", "x"] * 10, index=adata.obs_names, dtype=object)
    return (
        (lambda: scamort.Model(adata, batch_key="batch")),
        r"batch_key 'batch' holds values of different",
        [adata],
    )


def _case_continuous_column_as_batch():
    adata = _tiny()
    return (
        (lambda: scamort.Model(adata, batch_key="score")),
        r"batch_key 'score' holds numbers that are not whole \(e\.g\. .*continuous covariate",
        [adata],
    )


def _case_continuous_column_as_covariate():
    adata = _tiny()
    adata.obs["depth"] = np.linspace(0.5, 3.5, adata.n_obs)
    return (
        (lambda: scamort.Model(adata, categorical_covariate_keys=["depth"])),
        r"Categorical covariate 'depth' holds numbers that are not whole",
        [adata],
    )


def _case_cell_ids_as_batch():
    adata = _tiny()
    adata.obs["barcode"] = [f"AAAC{i:04d}" for i in range(adata.n_obs)]
    return (
        (lambda: scamort.Model(adata, batch_key="barcode")),
        r"batch_key 'barcode' gives every one of its 30 cells its own category",
        [adata],
    )


def _case_unique_integers_as_batch():
    adata = _tiny()
    adata.obs["rank"] = np.arange(adata.n_obs)
    return (
        (lambda: scamort.Model(adata, batch_key="rank")),
        r"batch_key 'rank' gives every one of its 30",
        [adata],
    )


def _case_fractional_batch_at_query():
    adata = _tiny()
    adata.obs["plate"] = np.arange(adata.n_obs) % 2
    model = scamort.Model(adata, batch_key="plate")
    query = _tiny(seed=5)
    query.obs["plate"] = np.where(np.arange(query.n_obs) % 2, 0.5, 1.0)
    return (
        (lambda: model.get_latent_representation(query)),
        r"batch_key 'plate' holds numbers that are not whole",
        [
            query,
            adata,
        ],
    )


def _case_gene_named_nan():
    adata = _tiny()
    adata.var_names = pd.Index(["g0", "g1", np.nan, "g3", "g4", "g5", "g6", "g7"], dtype=object)
    return (
        (lambda: scamort.Model(adata)),
        r"adata\.var_names has 1 missing \(NaN\) names \(first at position 2\)",
        [adata],
    )


def _case_gene_named_nan_with_layer():
    adata = _tiny()
    adata.var_names = pd.Index([None, "g1", "g2", "g3", "g4", "g5", "g6", "g7"], dtype=object)
    return (
        (lambda: scamort.Model(adata, layer="counts")),
        r"adata\.var_names has 1 missing \(NaN\) names",
        [adata],
    )


def _case_gene_named_nan_at_query():
    model = scamort.Model(_tiny())
    query = _tiny(seed=3)
    query.var_names = pd.Index([*model.adata.var_names[:-1], np.nan], dtype=object)
    return (lambda: model.get_latent_representation(query)), r"adata\.var_names has 1 missing", [query]


def _case_protein_column_named_nan():
    adata = _with_protein({})
    adata.obsm["protein"].columns = pd.Index(["CD3", np.nan], dtype=object)
    return (
        (lambda: scamort.Model(adata, modalities=_two_modalities(adata))),
        r"adata\.obsm\['protein'\] \(its columns\) has 1 missing \(NaN\) names",
        [adata],
    )


def _case_cell_named_nan():
    adata = _tiny()
    adata.obs_names = pd.Index([*adata.obs_names[:-1], np.nan], dtype=object)
    return (
        (lambda: scamort.Model(adata)),
        r"adata\.obs_names has 1 missing \(NaN\) names \(first at position 29\)",
        [adata],
    )


def _case_protein_text_column():
    adata = _with_protein({"CD4": ["high", "low", "3"] * 10})
    return (
        (lambda: scamort.Model(adata, modalities=_two_modalities(adata))),
        r"adata\.obsm\['protein'\] column 'CD4' is not numeric: it has dtype object \(e\.g\. 'high'\)",
        [adata],
    )


def _case_protein_categorical_column():
    adata = _with_protein({"CD3": pd.Categorical(["1", "2", "3"] * 10)})
    return (
        (lambda: scamort.Model(adata, modalities=_two_modalities(adata))),
        r"adata\.obsm\['protein'\] column 'CD3' is not numeric: it has dtype category",
        [adata],
    )


def _train_on(device):
    adata = _tiny()
    model = scamort.Model(adata)
    return (lambda: model.train(device=device, **TRAIN)), adata


def _case_device(device, pattern):
    def build():
        call, adata = _train_on(device)
        return call, pattern, [adata]

    return build


def _case_load_on_meta(tmp_path: Path):
    adata = _tiny()
    scamort.Model(adata).save(tmp_path / "model")
    return (
        (lambda: scamort.Model.load(tmp_path / "model", adata, device="meta")),
        r"device='meta' holds no data",
        [adata],
    )


def _case_backed_without_x(tmp_path: Path):
    adata = _tiny()
    stored = ad.AnnData(obs=adata.obs, var=adata.var, layers={"counts": adata.X})
    stored.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    # the counts are in a layer: the message says so (layer= reads it out of core)
    message = r"^Modality 'rna': adata\.X is empty; pass the count layer with layer=\.$"
    return (lambda: scamort.Model(backed)), message, [backed]


def _case_backed_count_above_range(tmp_path: Path):
    _set_entry(_tiny(), 2**30, np.float64).write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    return (lambda: scamort.Model(backed)), r"adata\.X \(backed\) has 1 entries above 16,777,216", [backed]


_DEVICE_CASES = {
    "device meta": _case_device("meta", r"device='meta' holds no data"),
    "device cuda:7": _case_device("cuda:7", r"device='cuda:7'"),
    "device cuda:-1": _case_device("cuda:-1", r"Unknown device 'cuda:-1'"),
    "device garbage": _case_device("g@rbage!", r"Unknown device 'g@rbage!'"),
    "device xla": _case_device("xla", r"device='xla' is not supported by scamort"),
    "device int": _case_device(7, r"device must be a string such as 'cpu', got 7"),
    "device None": _case_device(None, r"device must be a string such as 'cpu', got None"),
}
if not torch.backends.mps.is_available():
    _DEVICE_CASES["device mps"] = _case_device("mps", r"device='mps' was asked for but Apple's MPS")
if not torch.cuda.is_available():
    _DEVICE_CASES["device cuda"] = _case_device(
        "cuda", r"device='cuda' was asked for but CUDA is not available"
    )

DATA_CASES = {
    "count 2^31+1 int64": _case_count_above_range_int64,
    "count 1e39 dense float64": _case_count_1e39_dense,
    "count 2^24+1 in a layer": _case_count_just_above_range_in_layer,
    "count 2^25 in a protein table": _case_count_above_range_in_protein_table,
    "count 2^40 at query": _case_count_above_range_at_query,
    "batch 1 and '1'": _case_batch_int_and_text,
    "covariate '7' and 7": _case_covariate_int_and_text,
    "labels 0 and '0'": _case_labels_int_and_text,
    "categorical dtype with 1 and '1'": _case_categorical_dtype_with_int_and_text_categories,
    "batch True and 'True'": _case_batch_bool_and_text,
    "batch 2.0 and '2'": _case_batch_float_and_text,
    "continuous column as batch_key": _case_continuous_column_as_batch,
    "continuous column as categorical covariate": _case_continuous_column_as_covariate,
    "cell barcodes as batch_key": _case_cell_ids_as_batch,
    "unique integers as batch_key": _case_unique_integers_as_batch,
    "fractional batch at query": _case_fractional_batch_at_query,
    "gene named NaN": _case_gene_named_nan,
    "gene named None with a layer": _case_gene_named_nan_with_layer,
    "gene named NaN at query": _case_gene_named_nan_at_query,
    "protein column named NaN": _case_protein_column_named_nan,
    "cell named NaN": _case_cell_named_nan,
    "protein table with a text column": _case_protein_text_column,
    "protein table with a categorical column": _case_protein_categorical_column,
    **_DEVICE_CASES,
}
FILE_CASES = {
    "load onto device meta": _case_load_on_meta,
    "backed .h5ad without X": _case_backed_without_x,
    "backed count above range": _case_backed_count_above_range,
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_hostile_data_and_options_are_refused_before_any_work(case) -> None:
    call, pattern, objects = DATA_CASES[case]()
    assert_refused(call, InputError, pattern, *objects)


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_hostile_files_are_refused_before_any_work(case, tmp_path) -> None:
    call, pattern, objects = FILE_CASES[case](tmp_path)
    assert_refused(call, InputError, pattern, *objects)


def test_whole_number_batches_read_alike_at_training_and_query() -> None:
    """Integer at training, float at query (as after a merge with missing values): the same batches."""
    adata = _tiny()
    adata.obs["plate"] = np.arange(adata.n_obs) % 3
    model = scamort.Model(adata, batch_key="plate")
    assert model.registry.batch_categories == ("0", "1", "2")
    query = adata.copy()
    query.obs["plate"] = query.obs["plate"].astype(np.float64)
    np.testing.assert_array_equal(
        model.get_latent_representation(query), model.get_latent_representation(adata)
    )


def test_the_largest_supported_count_trains_with_log_likelihoods_below_zero() -> None:
    adata = _set_entry(_tiny(n_cells=40), MAX_COUNT, np.int64, where=(0, 1))
    model = scamort.Model(adata, n_latent=2, n_hidden=16)
    model.train(max_epochs=2, progress_bar=False, train_size=1.0)
    elbo = model.get_elbo(return_mean=False)
    assert np.isfinite(elbo).all() and (elbo < 0).all()


# ----------------------------------------------------------------------- the command line
def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = cli_main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "case",
    [
        "input is a folder",
        "text file named .h5ad",
        "HDF5 that is not an AnnData",
        "--modality twice",
        "--out in a read-only folder",
        "--model-dir in a read-only folder",
        "--out under /proc",
    ],
)
def test_cli_refuses_before_training(case, tmp_path, capsys, monkeypatch) -> None:
    adata = _tiny()
    source = tmp_path / "cells.h5ad"
    adata.write_h5ad(source)
    out = tmp_path / "result.h5ad"
    argv = ["fit", str(source), "--out", str(out), "--epochs", "1", "--no-progress"]
    if case == "input is a folder":
        (tmp_path / "folder.h5ad").mkdir()
        argv[1], pattern = str(tmp_path / "folder.h5ad"), r"folder\.h5ad is a folder, not a file"
    elif case == "text file named .h5ad":
        (tmp_path / "notes.h5ad").write_text("gene,count\nA,1\n")
        argv[1], pattern = str(tmp_path / "notes.h5ad"), r"notes\.h5ad is not an HDF5 file"
    elif case == "HDF5 that is not an AnnData":
        import h5py

        with h5py.File(tmp_path / "other.h5ad", "w") as handle:
            handle["values"] = np.arange(3)
        argv[1], pattern = str(tmp_path / "other.h5ad"), r"other\.h5ad cannot be read as \.h5ad"
    elif case == "--modality twice":
        argv += ["--modality", "rna=nb", "--modality", "rna=zinb"]
        pattern = r"--modality rna=\.\.\. is given more than once"
    elif case == "--out in a read-only folder":
        locked = tmp_path / "locked"
        locked.mkdir()
        deny_writing(monkeypatch, locked)
        argv[3], pattern = str(locked / "result.h5ad"), r"locked/result\.h5ad cannot be written: its folder"
    elif case == "--out under /proc":  # not writable even for root: the check is tried for real
        if not Path("/proc/self").is_dir():
            pytest.skip("needs /proc")
        argv[3] = "/proc/result.h5ad"
        pattern = r"/proc/result\.h5ad cannot be written: its folder /proc is not"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        deny_writing(monkeypatch, locked)
        argv += ["--model-dir", str(locked / "model")]
        pattern = r"locked/model cannot be written: its folder .*locked is not writable"
    before = source.read_bytes()
    from tests.snapshot import count_optimizer_steps

    with count_optimizer_steps() as steps:
        code, err = _cli(argv, capsys)
    assert code == 2 and steps.calls == 0, err
    assert re.search(pattern, err), err
    assert "Traceback" not in err and "scamort-new" not in err and "write-test" not in err
    assert source.read_bytes() == before and not out.exists()
