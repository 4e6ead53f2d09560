"""Tests for the ``scamort`` command line (scamort.cli), run in-process through ``main``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

from scamort.cli import DEMO_EPILOG, EMBED_EPILOG, EPILOG, FIT_EPILOG, MAP_EPILOG, build_parser, main
from scamort.demo import METRIC_KEYS

matplotlib.use("Agg")

FAST = ["--epochs", "2", "--n-latent", "3", "--no-progress"]


def write_counts(path: Path, n_cells: int = 100, n_genes: int = 30, seed: int = 0) -> Path:
    """Write a small h5ad of Poisson counts with a batch column and return its path."""
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(rng.poisson(rng.gamma(2.0, 1.0, size=n_genes), size=(n_cells, n_genes)))
    adata.X = adata.X.astype(np.float32)
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    adata.obs["batch"] = pd.Categorical(np.where(np.arange(n_cells) % 2 == 0, "b1", "b2"))
    adata.write_h5ad(path)
    return path


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    """stderr is exactly one ``scamort: error:`` line, containing every fragment."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("scamort: error: ")
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_commands_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for text in ("demo", "fit", "embed", "examples:", "X_scamort"):
        assert text in out


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("demo", ["--out", "--epochs", "--quick"]),
        (
            "fit",
            [
                "--out",
                "--layer",
                "--batch-key",
                "--epochs",
                "--n-latent",
                "--likelihood",
                "--model-dir",
                "--key-added",
                "--no-progress",
                "--refine-steps",
            ],
        ),
        ("embed", ["MODEL_DIR", "INPUT", "--out", "--key-added", "--refine-steps"]),
        (
            "map",
            ["REFERENCE_DIR", "INPUT", "--out", "--batch-key", "--max-epochs", "--refine", "--model-dir"],
        ),
    ],
)
def test_command_help_mentions_options(
    capsys: pytest.CaptureFixture[str], command: str, options: list[str]
) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    for option in options:
        assert option in out


def example_commands(epilog: str) -> list[list[str]]:
    """The ``scamort ...`` example lines of a help epilog, continuations joined, comments dropped."""
    text = epilog.replace("\\\n", " ")
    lines = [line.split("#")[0].split() for line in text.splitlines()]
    return [words[1:] for words in lines if words[:1] == ["scamort"]]


@pytest.mark.parametrize("epilog", [EPILOG, DEMO_EPILOG, FIT_EPILOG, EMBED_EPILOG, MAP_EPILOG])
def test_every_help_example_parses(epilog: str) -> None:
    examples = example_commands(epilog)
    assert examples
    parser = build_parser()
    for words in examples:
        parser.parse_args(words)


def test_multimodal_fit_example_gives_one_modality_per_option() -> None:
    (multimodal,) = [w for w in example_commands(FIT_EPILOG) if "prot=nb,obsm=protein_expression" in w]
    specs = build_parser().parse_args(multimodal).modality
    assert [spec[0] for spec in specs] == ["rna", "prot"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import scamort

    assert main(["--version"]) == 0
    assert scamort.__version__ in capsys.readouterr().out


def test_help_in_a_real_process() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scamort.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: scamort" in result.stdout


def test_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "cells.h5ad"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--out")


def test_missing_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert_one_line_error(capsys.readouterr().err, "COMMAND")


def test_bad_epochs_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "in.h5ad", "--out", str(tmp_path / "o.h5ad"), "--epochs", "-3"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--epochs")


def test_fit_missing_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.h5ad"
    assert main(["fit", str(missing), "--out", str(tmp_path / "o.h5ad"), *FAST]) == 2
    assert_one_line_error(capsys.readouterr().err, "nope.h5ad")


def test_fit_missing_batch_key_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_counts(tmp_path / "in.h5ad")
    out = tmp_path / "o.h5ad"
    assert main(["fit", str(source), "--out", str(out), "--batch-key", "donor", *FAST]) == 2
    assert_one_line_error(capsys.readouterr().err, "donor")
    assert not out.exists()


def test_fit_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_counts(tmp_path / "in.h5ad")
    assert main(["fit", str(source), "--out", str(source), *FAST]) == 2
    assert_one_line_error(capsys.readouterr().err, "--overwrite")


def test_fit_bad_output_suffix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_counts(tmp_path / "in.h5ad")
    assert main(["fit", str(source), "--out", str(tmp_path / "o.txt"), *FAST]) == 2
    assert_one_line_error(capsys.readouterr().err, ".h5ad")


def test_fit_then_embed_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_counts(tmp_path / "in.h5ad")
    out, model_dir = tmp_path / "fitted.h5ad", tmp_path / "model"
    args = ["fit", str(source), "--out", str(out), "--model-dir", str(model_dir)]
    assert main([*args, "--batch-key", "batch", "--key-added", "X_test", *FAST]) == 0
    assert str(out) in capsys.readouterr().out

    fitted = ad.read_h5ad(out)
    assert fitted.obsm["X_test"].shape == (100, 3)
    assert fitted.uns["X_test"]["params"]["init_params"]["batch_key"] == "batch"
    assert model_dir.is_dir()

    query = write_counts(tmp_path / "query.h5ad", n_cells=40, seed=1)
    embedded = tmp_path / "query_scamort.h5ad"
    assert main(["embed", str(model_dir), str(query), "--out", str(embedded)]) == 0
    assert ad.read_h5ad(embedded).obsm["X_scamort"].shape == (40, 3)

    table = tmp_path / "query.csv"
    assert main(["embed", str(model_dir), str(query), "--out", str(table)]) == 0
    assert pd.read_csv(table, index_col=0).shape == (40, 3)


def test_embed_with_refinement_writes_the_refined_means(tmp_path: Path) -> None:
    """``--refine-steps N`` embeds each cell's posterior after N refinement steps, and says so in .uns."""
    import scamort

    source = write_counts(tmp_path / "in.h5ad")
    model_dir = tmp_path / "model"
    assert (
        main(["fit", str(source), "--out", str(tmp_path / "fit.h5ad"), "--model-dir", str(model_dir), *FAST])
        == 0
    )
    query = write_counts(tmp_path / "query.h5ad", n_cells=40, seed=1)
    plain, refined = tmp_path / "plain.h5ad", tmp_path / "refined.h5ad"
    assert main(["embed", str(model_dir), str(query), "--out", str(plain)]) == 0
    assert main(["embed", str(model_dir), str(query), "--out", str(refined), "--refine-steps", "5"]) == 0
    plain_data, refined_data = ad.read_h5ad(plain), ad.read_h5ad(refined)
    assert plain_data.uns["X_scamort"]["params"]["refine_steps"] == 0
    assert refined_data.uns["X_scamort"]["params"]["refine_steps"] == 5
    model = scamort.Model.load(model_dir, ad.read_h5ad(query))
    expected = model.get_latent_representation(ad.read_h5ad(query), refine_steps=5)
    np.testing.assert_allclose(refined_data.obsm["X_scamort"], expected, rtol=1e-5, atol=1e-6)
    assert np.abs(refined_data.obsm["X_scamort"] - plain_data.obsm["X_scamort"]).max() > 1e-4


def test_negative_refine_steps_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_counts(tmp_path / "in.h5ad")
    assert main(["fit", str(source), "--out", str(tmp_path / "o.h5ad"), "--refine-steps", "-1"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--refine-steps", "expected a whole number >= 0")


def test_embed_missing_model_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_counts(tmp_path / "in.h5ad")
    code = main(["embed", str(tmp_path / "no_model"), str(source), "--out", str(tmp_path / "o.h5ad")])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "no_model")


def test_demo_quick_writes_every_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for name in ("worm_scamort.h5ad", "umap.png", "training_curve.png", "metrics.json", "model"):
        assert (out / name).exists(), name
        assert name in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics)
    assert metrics["n_genes"] == 2000 and metrics["n_cells"] == 4186
    assert 0.0 <= metrics["nmi"] <= 1.0 and np.isfinite(metrics["heldout_elbo_per_cell"])
    result = ad.read_h5ad(out / "worm_scamort.h5ad")
    assert {"X_scamort", "X_umap"} <= set(result.obsm) and "leiden" in result.obs


def test_overwrite_never_replaces_a_folder_of_other_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--model-dir`` pointing at a working folder is refused before training, even with --overwrite."""
    source = write_counts(tmp_path / "in.h5ad")
    out = tmp_path / "o.h5ad"
    args = ["fit", str(source), "--out", str(out), "--model-dir", str(tmp_path), "--overwrite", *FAST]
    assert main(args) == 2
    assert_one_line_error(capsys.readouterr().err, "not a saved scamort model")
    assert source.is_file() and not out.exists()


@pytest.mark.parametrize("key", ["", "X/scamort"])
def test_unstorable_key_added_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    source = write_counts(tmp_path / "in.h5ad")
    out = tmp_path / "o.h5ad"
    assert main(["fit", str(source), "--out", str(out), "--key-added", key, *FAST]) == 2
    assert_one_line_error(capsys.readouterr().err, "key_added must be a non-empty string without '/'")
    assert not out.exists()


def test_negative_seed_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "in.h5ad", "--out", str(tmp_path / "o.h5ad"), "--seed", "-5"]) == 2
    assert "--seed" in capsys.readouterr().err


def test_an_unexpected_failure_is_one_line_with_exit_code_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import scamort

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something\ninside broke")

    monkeypatch.setattr(scamort.Model, "train", broken)
    source = write_counts(tmp_path / "in.h5ad")
    assert main(["fit", str(source), "--out", str(tmp_path / "o.h5ad"), *FAST]) == 1
    assert_one_line_error(capsys.readouterr().err, "unexpected RuntimeError: something inside broke", "-vv")


def test_map_onto_a_saved_reference_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``scamort map`` maps a query with a new batch (and its genes in another order) onto a saved model."""
    source = write_counts(tmp_path / "in.h5ad")
    model_dir = tmp_path / "model"
    fit = ["fit", str(source), "--out", str(tmp_path / "fitted.h5ad"), "--model-dir", str(model_dir)]
    assert main([*fit, "--batch-key", "batch", *FAST]) == 0
    query = ad.read_h5ad(write_counts(tmp_path / "query.h5ad", n_cells=40, seed=1))
    query.obs["batch"] = pd.Categorical(["b3"] * 20 + ["b1"] * 20)
    query = query[:, query.var_names[::-1]].copy()
    query.write_h5ad(tmp_path / "query.h5ad")
    out, query_dir = tmp_path / "query_scamort.h5ad", tmp_path / "query_model"
    args = ["map", str(model_dir), str(tmp_path / "query.h5ad"), "--out", str(out), "--no-progress"]
    assert main([*args, "--max-epochs", "3", "--refine", "--model-dir", str(query_dir)]) == 0
    mapped = ad.read_h5ad(out)
    assert mapped.obsm["X_scamort"].shape == (40, 3) and np.isfinite(mapped.obsm["X_scamort"]).all()
    assert mapped.uns["X_scamort"]["params"]["refine_steps"] == 20
    assert (query_dir / "model.json").is_file()
    capsys.readouterr()
    assert main([*args, "--overwrite", "--batch-key", "no_such_column"]) == 2
    assert_one_line_error(capsys.readouterr().err, "no_such_column")
    assert main(["map", str(tmp_path / "nothing"), str(tmp_path / "query.h5ad"), "--out", str(out)]) == 2
    assert_one_line_error(capsys.readouterr().err, "No saved model folder")


def test_map_writes_labels_predicted_from_a_labelled_reference(tmp_path: Path) -> None:
    """A reference trained with ``labels_key``: ``scamort map`` also writes each query cell's predicted label
    and its confidence (``tl.transfer_labels`` on the query model)."""
    import scamort

    reference = ad.read_h5ad(write_counts(tmp_path / "ref.h5ad", n_cells=80))
    reference.obs["kind"] = pd.Categorical(np.where(np.arange(80) % 4 < 2, "A", "B"))
    model = scamort.Model(reference, batch_key="batch", labels_key="kind", n_latent=3, seed=0)
    model.train(max_epochs=3, progress_bar=False)
    model.save(tmp_path / "reference")
    query = ad.read_h5ad(write_counts(tmp_path / "query.h5ad", n_cells=30, seed=2))
    query.obs["batch"] = pd.Categorical(["site3"] * 30)
    query.write_h5ad(tmp_path / "query.h5ad")
    out = tmp_path / "mapped.h5ad"
    args = ["map", str(tmp_path / "reference"), str(tmp_path / "query.h5ad"), "--out", str(out)]
    assert main([*args, "--no-progress", "--max-epochs", "2", "--labels-key-added", "pred"]) == 0
    mapped = ad.read_h5ad(out)
    assert set(mapped.obs["pred"].cat.categories) == {"A", "B", "unknown"}
    confidence = mapped.obs["pred_confidence"].to_numpy()
    assert confidence.shape == (30,) and ((confidence >= 0) & (confidence <= 1)).all()
    novelty = mapped.obs["pred_novelty"].to_numpy()
    assert novelty.shape == (30,) and ((novelty >= 0) & (novelty <= 1)).all()
    assert mapped.uns["pred"]["params"]["labels_key"] == "kind"
    assert "kind" not in mapped.obs  # the query's own (absent) labels are not invented
