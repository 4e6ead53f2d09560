"""Saving never destroys what it should not, loading refuses damaged folders in one sentence, and the
model's query arguments are checked before any work."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

import scamort
from scamort import InputError, io
from scamort.export import embed
from tests.conftest import make_counts


@pytest.fixture(scope="module")
def trained() -> scamort.Model:
    model = scamort.Model(make_counts(n_cells=120, n_genes=20, seed=4), batch_key="batch", n_latent=3)
    model.train(max_epochs=3, progress_bar=False)
    return model


# ----------------------------------------------------------------------------- saving
def test_overwrite_refuses_a_folder_that_is_not_a_saved_model(trained, tmp_path) -> None:
    folder = tmp_path / "analysis"
    folder.mkdir()
    (folder / "cells.h5ad").write_text("precious")
    with pytest.raises(FileExistsError, match=r"not a saved scamort model .*choose another path"):
        trained.save(folder, overwrite=True)
    assert (folder / "cells.h5ad").read_text() == "precious"
    afile = tmp_path / "notes.txt"
    afile.write_text("keep")
    with pytest.raises(FileExistsError, match="is a file, not a model folder"):
        trained.save(afile, overwrite=True)
    assert afile.read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    trained.save(empty, overwrite=True)  # an empty folder may be filled
    assert sorted(p.name for p in empty.iterdir()) == ["model.json", "weights.pt"]


def test_an_interrupted_overwrite_keeps_the_previous_model(trained, tmp_path, monkeypatch) -> None:
    target = tmp_path / "model"
    trained.save(target)
    before = (target / "weights.pt").read_bytes()
    real_replace = os.replace
    calls = []

    def interrupted_second_rename(source, destination):
        calls.append(source)
        if len(calls) == 2:  # staging -> target, after the old model was moved aside
            raise KeyboardInterrupt
        real_replace(source, destination)

    monkeypatch.setattr(io.os, "replace", interrupted_second_rename)
    with pytest.raises(KeyboardInterrupt):
        trained.save(target, overwrite=True)
    monkeypatch.undo()
    assert (target / "weights.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    scamort.Model.load(target, trained.adata)


def test_a_saved_folder_has_the_permissions_of_any_new_folder(trained, tmp_path) -> None:
    previous = os.umask(0o022)
    try:
        trained.save(tmp_path / "model")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755


def test_numpy_integers_in_the_constructor_can_be_saved(tmp_path) -> None:
    model = scamort.Model(make_counts(n_cells=60, n_genes=12), n_latent=np.int64(4), n_hidden=np.int32(16))
    model.save(tmp_path / "model")
    loaded = scamort.Model.load(tmp_path / "model", model.adata)
    assert loaded.init_params["n_latent"] == 4 and type(loaded.init_params["n_latent"]) is int


def test_a_negative_seed_is_refused_before_any_work() -> None:
    with pytest.raises(InputError, match=r"seed must be an integer >= 0, got -5"):
        scamort.Model(make_counts(n_cells=30, n_genes=8), seed=-5)


# ----------------------------------------------------------------------------- loading
def test_damaged_or_foreign_weights_are_refused_in_one_sentence(trained, tmp_path) -> None:
    target = tmp_path / "model"
    trained.save(target)
    weights = target / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(InputError, match=r"weights\.pt cannot be read .*save the model again"):
        scamort.Model.load(target, trained.adata)
    other = scamort.Model(trained.adata, batch_key="batch", n_latent=5)
    other.save(tmp_path / "other")
    os.replace(tmp_path / "other" / "weights.pt", weights)
    with pytest.raises(InputError, match=r"do not fit the model its model\.json describes"):
        scamort.Model.load(target, trained.adata)
    (target / "weights.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"not a complete saved scamort model \(no weights\.pt"):
        scamort.Model.load(target, trained.adata)


@pytest.mark.parametrize("thing", ["cells.h5ad", None])
def test_load_needs_data_objects_not_paths(trained, tmp_path, thing) -> None:
    trained.save(tmp_path / "model")
    with pytest.raises(InputError, match=r"Model\.load attaches the model to an AnnData or MuData"):
        scamort.Model.load(tmp_path / "model", thing)
    with pytest.raises(InputError, match="Unknown device 'gpu'"):
        scamort.Model.load(tmp_path / "model", trained.adata, device="gpu")


# ----------------------------------------------------------------------------- queries
@pytest.mark.parametrize(
    ("indices", "message"),
    [
        (np.ones(50, dtype=bool), r"mask needs one entry per cell \(120\); got shape \(50,\)"),
        ([0.5, 1.9], r"integer positions or a boolean mask; got float64"),
        ([-1000, 5], r"indices must lie in \[-120, 120\); got -1000"),
        ([3, 120], r"got 120"),
        ([], r"indices selects no cells"),
    ],
)
def test_bad_indices_are_refused(trained, indices, message) -> None:
    with pytest.raises(InputError, match=message):
        trained.get_latent_representation(indices=indices)


def test_indices_select_the_cells_they_name(trained) -> None:
    full = trained.get_latent_representation()
    mask = np.zeros(trained.adata.n_obs, dtype=bool)
    mask[[4, 7]] = True
    np.testing.assert_array_equal(trained.get_latent_representation(indices=mask), full[[4, 7]])
    np.testing.assert_array_equal(trained.get_latent_representation(indices=[-1, 0]), full[[-1, 0]])


@pytest.mark.parametrize("key", ["", "X/scamort", 3])
def test_keys_an_h5ad_cannot_store_are_refused(trained, key) -> None:
    adata = trained.adata.copy()
    with pytest.raises(InputError, match="key_added must be a non-empty string without '/'"):
        embed(adata, trained, key_added=key)
    assert "X/scamort" not in adata.obsm and "" not in adata.obsm


def test_float64_posteriors_decode_like_float32(trained) -> None:
    from scamort import inference

    data, index = trained._data, np.arange(10)
    mean, log_variance = inference.latent(trained.module, data, index)
    as32 = inference.normalized_expression(
        trained.module, data, index, modality="rna", posteriors=(mean, log_variance)
    )
    as64 = inference.normalized_expression(
        trained.module, data, index, modality="rna", posteriors=(mean.astype(np.float64), log_variance)
    )
    np.testing.assert_array_equal(as32, as64)
    with pytest.raises(InputError, match="one row per cell"):
        inference.normalized_expression(
            trained.module, data, index, modality="rna", posteriors=(mean[:5], log_variance[:5])
        )


def test_embedding_params_do_not_share_lists_with_the_model(trained) -> None:
    adata = trained.adata.copy()
    embed(adata, trained)
    adata.uns["X_scamort"]["params"]["init_params"]["categorical_covariate_keys"].append("donor")
    assert trained.init_params["categorical_covariate_keys"] == []


def test_negative_binomial_at_large_inverse_dispersion_matches_scipy() -> None:
    from scipy import stats

    from scamort.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial

    mu = torch.tensor([[100.0, 0.5, 3.0]])
    theta = torch.tensor([1e6, 1e5, 1e4])
    zeros = torch.zeros(1, 3)
    theta64, mu64 = theta.double().numpy(), mu.double().numpy()
    reference = stats.nbinom.logpmf(0, theta64, theta64 / (theta64 + mu64))
    nb = NegativeBinomial(mu.log(), theta.log())
    np.testing.assert_allclose(nb.log_prob(zeros).numpy(), reference, atol=1e-4)
    np.testing.assert_allclose(nb.log_prob_at_zero().numpy(), reference, atol=1e-4)
    no_inflation = ZeroInflatedNegativeBinomial(mu.log(), theta.log(), torch.full((1, 3), -300.0))
    np.testing.assert_allclose(no_inflation.log_prob(zeros).numpy(), reference, atol=1e-4)


# ======================================================================= issue 18
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

from scamort.replace_journal import JOURNAL_FILE  # noqa: E402
from tests.snapshot import assert_refused  # noqa: E402


@pytest.fixture(scope="module")
def saved_folder(trained, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "model"
    trained.save(folder)
    return folder


def _copy(saved_folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(saved_folder, target)
    return target


def _edit_spec(edit):
    def apply(folder: Path) -> None:
        spec = json.loads((folder / "model.json").read_text())
        edit(spec)
        (folder / "model.json").write_text(json.dumps(spec))

    return apply


def _set(path: tuple, value):
    def edit(spec):
        node = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _delete(path: tuple):
    def edit(spec):
        node = spec
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


def _edit_weights(edit):
    def apply(folder: Path) -> None:
        state = torch.load(folder / "weights.pt", weights_only=True)
        torch.save(edit(state), folder / "weights.pt")

    return apply


def _first_matrix(state: dict) -> str:
    return next(k for k, v in state.items() if v.dim() == 2)


def _as_float64(state: dict) -> dict:
    name = _first_matrix(state)
    return {**state, name: state[name].double()}


def _without_one(state: dict) -> dict:
    return dict(list(state.items())[1:])


def _with_nan(state: dict) -> dict:
    name = _first_matrix(state)
    return {**state, name: torch.full_like(state[name], float("nan"))}


def _spec_text(text: str):
    return lambda folder: (folder / "model.json").write_text(text)


def _cut_spec(folder: Path) -> None:
    text = (folder / "model.json").read_text()
    (folder / "model.json").write_text(text[: len(text) // 2])


def _cut_weights(folder: Path) -> None:
    data = (folder / "weights.pt").read_bytes()
    (folder / "weights.pt").write_bytes(data[: len(data) // 2])


DAMAGED_MODELS = {
    "model.json cut short": (
        _cut_spec,
        r"model\.json is not valid JSON \(it breaks off or is malformed at line",
    ),
    "model.json empty": (_spec_text(""), r"model\.json is not valid JSON \(it is empty\)"),
    "model.json a JSON list": (_spec_text("[1, 2]"), r"model\.json holds a JSON list"),
    "model.json binary": (
        lambda f: (f / "model.json").write_bytes(b"\x89\xff\xfe\x00garbage"),
        r"model\.json is not text",
    ),
    "no init_params": (
        _edit_spec(_delete(("init_params",))),
        r"model\.json is not a valid saved model \(it lacks 'init_params'",
    ),
    "n_latent is text": (
        _edit_spec(_set(("init_params", "n_latent"), "three")),
        r"init_params 'n_latent' is str, not int",
    ),
    "n_hidden is a bool": (
        _edit_spec(_set(("init_params", "n_hidden"), True)),
        r"init_params 'n_hidden' is bool",
    ),
    "is_trained is text": (_edit_spec(_set(("is_trained",), "yes")), r"'is_trained' is str, not bool"),
    "feature names missing": (
        _edit_spec(lambda s: s["registry"]["modalities"][0].pop("feature_names")),
        r"registry modality 'rna' has no list of feature names",
    ),
    "unknown likelihood": (
        _edit_spec(
            lambda s: s["registry"]["modalities"][0]["modality"].__setitem__("likelihood", "gaussian")
        ),
        r"registry modality 'rna' is invalid",
    ),
    "batch categories not text": (
        _edit_spec(_set(("registry", "batch_categories"), [0, 1])),
        r"registry 'batch_categories' is not a list of strings",
    ),
    "split holds text": (
        _edit_spec(_set(("split", "train_indices"), ["a"])),
        r"split 'train_indices' is not a list of cell positions",
    ),
    "history ragged": (
        _edit_spec(lambda s: s["history"].__setitem__("epoch", [])),
        r"'history' is not a table of equal-length columns",
    ),
    "weights cut short": (_cut_weights, r"weights\.pt cannot be read \(\d+ bytes: cut short"),
    "weights replaced by text": (
        lambda f: (f / "weights.pt").write_text("these are not weights"),
        r"weights\.pt cannot be read \(21 bytes",
    ),
    "weights empty": (lambda f: (f / "weights.pt").write_bytes(b""), r"weights\.pt is empty"),
    "weights a list": (
        lambda f: torch.save([torch.zeros(2)], f / "weights.pt"),
        r"weights\.pt does not hold named tensors",
    ),
    "a weight in float64": (
        _edit_weights(_as_float64),
        r"do not fit the model .*torch\.float64, the model needs",
    ),
    "a weight missing": (_edit_weights(_without_one), r"do not fit the model .*\(it lacks 1 tensors"),
    "a weight of NaN": (_edit_weights(_with_nan), r"holds non-finite values"),
}


@pytest.mark.parametrize("case", list(DAMAGED_MODELS))
def test_a_damaged_saved_model_is_refused_naming_the_file(case, trained, saved_folder, tmp_path) -> None:
    damage, pattern = DAMAGED_MODELS[case]
    folder = _copy(saved_folder, tmp_path)
    damage(folder)
    adata = trained.adata
    assert_refused(lambda: scamort.Model.load(folder, adata), InputError, pattern, adata)


def test_a_model_path_that_is_a_file_is_refused(trained, tmp_path) -> None:
    afile = tmp_path / "model"
    afile.write_text("x")
    assert_refused(
        lambda: scamort.Model.load(afile, trained.adata),
        InputError,
        r"model is a file, not a saved",
        trained.adata,
    )


def test_saving_into_a_read_only_folder_names_the_users_path(trained, tmp_path, monkeypatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda p, mode, *a, **k: False if Path(p) == locked and mode & os.W_OK else real_access(p, mode),
    )
    assert_refused(
        lambda: trained.save(locked / "model"),
        InputError,
        r"The model folder .*locked/model cannot be written: its folder .*locked is not writable",
        trained.adata,
    )
    assert list(locked.iterdir()) == []


# ----------------------------------------------------------------------------- killed while replacing
class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no except, no finally that renames)."""


def _kill_after(monkeypatch, n_renames: int) -> None:
    """From the (n+1)-th call on, os.replace kills the process (every later call fails too)."""
    real_replace, calls = os.replace, [0]

    def replace(source, destination):
        calls[0] += 1
        if calls[0] > n_renames:
            raise _Killed
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace)


def _other_model(trained) -> scamort.Model:
    return scamort.Model(trained.adata, batch_key="batch", n_latent=3, seed=9)


def test_killed_between_the_renames_the_next_load_restores_the_previous_model(
    trained, tmp_path, monkeypatch
) -> None:
    target = tmp_path / "model"
    trained.save(target)
    before = (target / "weights.pt").read_bytes()
    user_folder = tmp_path / ".model.old"  # a user's folder that only looks like a temporary name
    user_folder.mkdir()
    (user_folder / "mine.txt").write_text("keep")
    _kill_after(monkeypatch, 1)
    with pytest.raises(_Killed):
        _other_model(trained).save(target, overwrite=True)
    monkeypatch.undo()
    assert not target.exists()  # the state a SIGKILL between the renames leaves
    loaded = scamort.Model.load(target, trained.adata)
    assert (target / "weights.pt").read_bytes() == before
    np.testing.assert_array_equal(loaded.get_latent_representation(), trained.get_latent_representation())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.old", "model"]
    assert (user_folder / "mine.txt").read_text() == "keep"


def test_killed_between_the_renames_the_next_save_restores_then_replaces(
    trained, tmp_path, monkeypatch
) -> None:
    target = tmp_path / "model"
    trained.save(target)
    _kill_after(monkeypatch, 1)
    with pytest.raises(_Killed):
        _other_model(trained).save(target, overwrite=True)
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match="already exists"):  # the restored model is protected again
        _other_model(trained).save(target)
    _other_model(trained).save(target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert not (target / JOURNAL_FILE).exists()


def test_killed_after_the_second_rename_the_new_model_stays(trained, tmp_path, monkeypatch) -> None:
    target = tmp_path / "model"
    trained.save(target)
    other = _other_model(trained)
    _kill_after(monkeypatch, 2)
    real_unlink = Path.unlink
    monkeypatch.setattr(
        Path,
        "unlink",
        lambda self, *a, **k: (
            (_ for _ in ()).throw(_Killed()) if self.name == JOURNAL_FILE else real_unlink(self, *a, **k)
        ),
    )
    with pytest.raises(_Killed):
        other.save(target, overwrite=True)
    monkeypatch.undo()
    assert (target / JOURNAL_FILE).exists()  # new model in place, old one still aside
    loaded = scamort.Model.load(target, trained.adata)
    np.testing.assert_array_equal(loaded.get_latent_representation(), other.get_latent_representation())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_killed_while_writing_the_weights_leaves_the_previous_model_alone(
    trained, tmp_path, monkeypatch
) -> None:
    target = tmp_path / "model"
    trained.save(target)
    before = (target / "weights.pt").read_bytes()
    monkeypatch.setattr(
        io.torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    )
    with pytest.raises(OSError, match="No space left"):
        _other_model(trained).save(target, overwrite=True)
    monkeypatch.undo()
    assert (target / "weights.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_folders_that_only_look_like_temporary_ones_are_never_touched(trained, tmp_path) -> None:
    target = tmp_path / "model"
    trained.save(target)
    lookalikes = [
        tmp_path / ".model.scamort-new-abc",
        tmp_path / ".model.scamort-old-abc",
        tmp_path / ".model.old",
    ]
    for folder in lookalikes:
        folder.mkdir()
        (folder / "data.txt").write_text("user")
    forged = tmp_path / ".model.scamort-new-forged"
    forged.mkdir()  # a journal naming another target is not ours for this one
    (forged / JOURNAL_FILE).write_text(json.dumps({"target": "elsewhere", "retired": ".model.old"}))
    scamort.Model.load(target, trained.adata)
    _other_model(trained).save(target, overwrite=True)
    for folder in [*lookalikes, forged]:
        assert folder.is_dir()
    assert all((folder / "data.txt").read_text() == "user" for folder in lookalikes)
