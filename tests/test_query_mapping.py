"""Reference mapping (``Model.load_query_data``): what is frozen, what learns, how a query is read."""

from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scamort
from scamort.data.sparse_batch import SparseBatch
from scamort.errors import InputError
from scamort.reference_embedding import load_reference_embedding, save_reference_embedding
from tests.conftest import make_counts
from tests.snapshot import assert_refused, assert_unchanged, take


def _split(adata: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    """Reference = batches b0 and b1, query = b2."""
    return adata[adata.obs["batch"] != "b2"].copy(), adata[adata.obs["batch"] == "b2"].copy()


@pytest.fixture(scope="module")
def data() -> tuple[ad.AnnData, ad.AnnData]:
    return _split(make_counts(n_cells=360, n_batches=3, seed=1))


@pytest.fixture(scope="module")
def reference(data) -> scamort.Model:
    ref, _ = data
    torch.manual_seed(0)
    model = scamort.Model(ref, batch_key="batch", dispersion="gene-batch", n_hidden=32, n_latent=5)
    model.train(max_epochs=15, progress_bar=False)
    return model


@pytest.fixture(scope="module")
def reference_dir(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("mapping") / "reference"
    reference.save(path)
    return path


def _state(model: scamort.Model) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.module.state_dict().items()}


def test_reference_is_untouched_and_its_cells_embed_bitwise_alike(data, reference):
    ref, query = data
    latent, state = reference.get_latent_representation(), _state(reference)
    query_model = scamort.Model.load_query_data(query, reference)
    query_model.train(progress_bar=False)
    assert np.array_equal(reference.get_latent_representation(), latent)
    assert all(torch.equal(state[name], t) for name, t in reference.module.state_dict().items())
    # The query model embeds the reference's cells exactly as the reference does (shift bypassed).
    assert np.array_equal(query_model.get_latent_representation(ref), latent)
    assert query_model.module is not reference.module


def test_only_new_rows_learn_even_under_weight_decay(data, reference):
    _, query = data
    query_model = scamort.Model.load_query_data(query, reference)
    before = _state(query_model)
    trainable = {n for n, p in query_model.module.named_parameters() if p.requires_grad}
    assert trainable == {
        "encoders.rna.gene_shift.shift",
        "decoders.rna.body.layers.0.embeddings.0.parametrizations.weight.original",
        "decoders.rna.parametrizations.log_theta.original",
    }
    query_model.train(max_epochs=5, weight_decay=1.0, lr=0.05, early_stopping=False, progress_bar=False)
    after = query_model.module.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == trainable
    # The reference rows read through the whole weights are the reference's, bitwise.
    embedding = query_model.module.decoders["rna"].body.layers[0].embeddings[0].weight
    reference_embedding = reference.module.decoders["rna"].body.layers[0].embeddings[0].weight
    assert embedding.shape == (3, reference_embedding.shape[1])
    assert torch.equal(embedding[:2], reference_embedding)
    log_theta = query_model.module.decoders["rna"].log_theta
    assert torch.equal(log_theta[:2], reference.module.decoders["rna"].log_theta)


def test_query_cells_of_reference_batches_use_the_reference_rows(data, reference):
    ref, _ = data
    own = ref[:50].copy()
    query_model = scamort.Model.load_query_data(own, reference)
    assert query_model.registry.batch_categories == reference.registry.batch_categories
    assert np.array_equal(query_model.get_latent_representation(), reference.get_latent_representation(own))
    elbos = []
    for model, cells in ((query_model, None), (reference, own)):
        torch.manual_seed(0)  # the same draw of z for both
        elbos.append(model.get_elbo(cells))
    assert elbos[0] == pytest.approx(elbos[1], rel=1e-6)
    assert_refused(lambda: query_model.train(progress_bar=False), InputError, "nothing to learn")


def test_mapping_learns_the_new_batch(data, reference):
    _, query = data
    query_model = scamort.Model.load_query_data(query, reference)
    untrained = query_model.get_elbo()
    query_model.train(progress_bar=False)
    assert query_model.history["kl_weight"].eq(1.0).all()  # no warm-up: the reference is trained
    assert len(query_model.history) <= 100
    assert query_model.get_elbo() > untrained


def test_permuted_genes_map_exactly_as_in_reference_order(data, reference):
    _, query = data
    rng = np.random.default_rng(0)
    permuted = query[:, rng.permutation(query.n_vars)].copy()
    models = [scamort.Model.load_query_data(q, reference) for q in (query, permuted)]
    for model in models:
        model.train(max_epochs=5, progress_bar=False)
    assert np.array_equal(models[0].get_latent_representation(), models[1].get_latent_representation())


def test_missing_genes_are_unmeasured_not_zeros(data, reference):
    _, query = data
    kept = query.var_names[10:]
    missing = query[:, kept].copy()
    zeros = query.copy()
    dense = query.X.toarray()
    dense[:, :10] = 0
    zeros.X = sp.csr_matrix(dense)
    model = scamort.Model.load_query_data(missing, reference)
    tensors = model._data.modalities["rna"]
    mask = tensors.measured_rows(0, missing.n_obs)
    assert mask is not None and not mask[:, :10].any() and mask[:, 10:].all()
    assert torch.allclose(tensors.log_library, torch.log(torch.as_tensor(missing.X.sum(1)).ravel().float()))
    zero_model = scamort.Model.load_query_data(zeros, reference)
    # The likelihood leaves them out (renormalised over measured genes): not the ELBO of zero counts.
    elbos = []
    for m in (model, zero_model):
        torch.manual_seed(0)  # the same draw of z (the encoders read both alike)
        elbos.append(m.get_elbo(return_mean=False))
    assert not np.allclose(elbos[0], elbos[1])
    assert elbos[0].mean() > elbos[1].mean()  # zero counts of expressed genes would cost likelihood
    # The same query mapped with the missing genes re-added as unmeasured columns of anything.
    model.train(max_epochs=3, progress_bar=False)
    assert np.isfinite(model.get_latent_representation()).all()


def test_extra_genes_are_dropped_with_one_log_line(data, reference, caplog):
    _, query = data
    extra = ad.AnnData(
        sp.random(query.n_obs, 5, density=0.5, format="csr", random_state=0, dtype=np.float32) * 10,
        obs=query.obs,
        var=pd.DataFrame(index=[f"novel{i}" for i in range(5)]),
    )
    extra.X.data = np.round(extra.X.data) + 1
    wider = ad.concat([query, extra], axis=1, merge="first")
    wider.obs = query.obs.copy()
    with caplog.at_level(logging.INFO, logger="scamort"):
        wide_model = scamort.Model.load_query_data(wider, reference)
    lines = [r for r in caplog.records if "dropping" in r.getMessage()]
    assert len(lines) == 1 and "5" in lines[0].getMessage() and "novel0" in lines[0].getMessage()
    plain = scamort.Model.load_query_data(query, reference)
    assert np.array_equal(wide_model.get_latent_representation(), plain.get_latent_representation())


def test_folder_only_mapping_equals_in_memory(data, reference, reference_dir):
    _, query = data
    models = [scamort.Model.load_query_data(query, r) for r in (reference, reference_dir, str(reference_dir))]
    for model in models:
        model.train(max_epochs=5, progress_bar=False)
    latents = [m.get_latent_representation() for m in models]
    assert np.array_equal(latents[0], latents[1]) and np.array_equal(latents[0], latents[2])


def test_query_model_saves_loads_and_keeps_its_reference_rows_frozen(data, reference, tmp_path):
    _, query = data
    query_model = scamort.Model.load_query_data(query, reference)
    query_model.train(max_epochs=5, progress_bar=False)
    query_model.save(tmp_path / "query")
    loaded = scamort.Model.load(tmp_path / "query", query)
    assert np.array_equal(loaded.get_latent_representation(), query_model.get_latent_representation())
    assert loaded.registry.batch_categories == ("b0", "b1", "b2")
    before = _state(loaded)
    loaded.train(max_epochs=2, early_stopping=False, progress_bar=False)
    frozen = [n for n, p in loaded.module.named_parameters() if not p.requires_grad]
    assert frozen and all(torch.equal(before[n], loaded.module.state_dict()[n]) for n in frozen)
    spec = json.loads((tmp_path / "query" / "model.json").read_text())
    assert spec["init_params"]["query_mapping"]["reference_batches"] == 2
    spec["init_params"]["query_mapping"]["frozen_rows"] = {"no.such.weight": 1}
    (tmp_path / "query" / "model.json").write_text(json.dumps(spec))
    assert_refused(lambda: scamort.Model.load(tmp_path / "query", query), InputError, "query mapping")


def test_new_categorical_covariate_categories_get_new_rows():
    adata = make_counts(n_cells=300, n_batches=3, seed=2)
    adata.obs["site"] = pd.Categorical(np.where(adata.obs["batch"] == "b2", "siteB", "siteA"))
    ref, query = _split(adata)
    reference = scamort.Model(ref, batch_key="batch", categorical_covariate_keys=["site"], n_hidden=16)
    reference.train(max_epochs=3, progress_bar=False)
    query_model = scamort.Model.load_query_data(query, reference)
    assert query_model.registry.categorical_covariates == (("site", ("siteA", "siteB")),)
    layer = query_model.module.decoders["rna"].body.layers[0]
    assert [e.weight.shape[0] for e in layer.embeddings] == [3, 2]
    query_model.train(max_epochs=2, progress_bar=False)
    reference_layer = reference.module.decoders["rna"].body.layers[0]
    assert torch.equal(layer.embeddings[1].weight[:1], reference_layer.embeddings[1].weight)


def _cite(seed: int) -> ad.AnnData:
    """Synthetic CITE-seq: RNA in X, 12 proteins (driven by the same cell types) in obsm."""
    adata = make_counts(n_cells=360, n_batches=3, seed=seed)
    rng = np.random.default_rng(seed)
    types = adata.obs["cell_type"].cat.codes.to_numpy()
    levels = rng.gamma(1.0, 30.0, size=(3, 12))
    protein = rng.poisson(levels[types] + 5.0).astype(np.float32)
    adata.obsm["protein_expression"] = pd.DataFrame(
        protein, index=adata.obs_names, columns=[f"prot{i}" for i in range(12)]
    )
    return adata


def test_rna_only_query_on_a_cite_reference_imputes_its_protein():
    ref, query = _split(_cite(3))
    hidden = query.obsm["protein_expression"].to_numpy()
    del query.obsm["protein_expression"]
    modalities = {
        "rna": scamort.Modality(),
        "prot": scamort.Modality(obsm_key="protein_expression", likelihood="nbmixture"),
    }
    reference = scamort.Model(ref, batch_key="batch", modalities=modalities, n_hidden=32, n_latent=5)
    # 80 epochs: the RNA decoder's damped output layer needs them on this small set (median r about 0.88;
    # 0.43 after 40)
    reference.train(max_epochs=80, progress_bar=False)
    before = take(query)
    query_model = scamort.Model.load_query_data(query, reference)
    query_model.train(progress_bar=False)
    assert_unchanged(query, before)
    assert not query_model._data.modalities["prot"].present.any()
    imputed = query_model.impute(modality="prot")
    assert imputed.shape == hidden.shape and list(imputed.columns) == [f"prot{i}" for i in range(12)]
    r = [np.corrcoef(np.log1p(imputed.iloc[:, j]), np.log1p(hidden[:, j]))[0, 1] for j in range(12)]
    assert np.median(r) > 0.5


def test_bad_input_is_refused_in_one_sentence_before_any_work(data, reference, reference_dir, tmp_path):
    _, query = data
    few = query[:, :20].copy()
    assert_refused(lambda: scamort.Model.load_query_data(few, reference), InputError, "at least half", few)
    assert_refused(lambda: scamort.Model.load_query_data(query, 3), InputError, "reference must be", query)
    assert_refused(
        lambda: scamort.Model.load_query_data(query, tmp_path), InputError, "not a saved scamort model"
    )
    assert_refused(lambda: scamort.Model.load_query_data(query.X, reference), InputError, "query must be")
    untrained = scamort.Model(data[0], batch_key="batch")
    assert_refused(lambda: scamort.Model.load_query_data(query, untrained), InputError, "not trained")
    nan = query.copy()
    nan.obs["batch"] = nan.obs["batch"].astype(object)
    nan.obs.iloc[:3, nan.obs.columns.get_loc("batch")] = np.nan
    assert_refused(lambda: scamort.Model.load_query_data(nan, reference), InputError, "missing values", nan)
    no_batch = query.copy()
    del no_batch.obs["batch"]
    assert_refused(lambda: scamort.Model.load_query_data(no_batch, reference), InputError, "batch_key")
    assert_refused(
        lambda: scamort.Model.load_query_data(query, reference, gene_shift="yes"), InputError, "gene_shift"
    )
    # Another save format.
    other = tmp_path / "other"
    reference.save(other)
    spec = json.loads((other / "model.json").read_text())
    spec["format_version"] = 99
    (other / "model.json").write_text(json.dumps(spec))
    assert_refused(lambda: scamort.Model.load_query_data(query, other), InputError, "save format 99")
    # A query with a modality the reference lacks.
    mudata = pytest.importorskip("mudata")
    mdata = mudata.MuData({"rna": query, "atac": query.copy()})
    assert_refused(lambda: scamort.Model.load_query_data(mdata, reference), InputError, "'atac'")
    # Mapping onto a query model.
    query_model = scamort.Model.load_query_data(query, reference_dir)
    assert_refused(lambda: scamort.Model.load_query_data(query, query_model), InputError, "itself a query")


def test_reference_embedding_round_trips_through_the_folder(data, reference, tmp_path):
    ref, _ = data
    folder = tmp_path / "reference"
    reference.save(folder)
    path = save_reference_embedding(reference, folder, labels_key="cell_type")
    stored = load_reference_embedding(folder)
    assert np.array_equal(stored.obsm["X_scamort"], reference.get_latent_representation())
    assert stored.obsm["X_scamort"].dtype == np.float32
    assert list(stored.obs_names) == list(ref.obs_names)
    assert list(stored.obs["cell_type"]) == list(ref.obs["cell_type"].astype(str))
    assert list(stored.obs["batch"]) == list(ref.obs["batch"].astype(str))
    assert path.stat().st_size < ref.n_obs * (4 * reference.n_latent + 200)
    path.write_bytes(b"not a zip")
    assert_refused(lambda: load_reference_embedding(folder), InputError, "damaged")
    assert_refused(lambda: load_reference_embedding(tmp_path / "nothing"), FileNotFoundError, "not a saved")
    other = scamort.Model(make_counts(n_genes=30), n_hidden=8)
    assert_refused(lambda: save_reference_embedding(other, folder), InputError, "another model")


def test_gene_shift_adds_a_per_gene_shift_to_nonzero_log_counts_of_new_batch_cells(data, reference, tmp_path):
    ref, query = data
    query_model = scamort.Model.load_query_data(query, reference, encoder_shift=True)  # gene_shift default
    trainable = {n for n, p in query_model.module.named_parameters() if p.requires_grad}
    assert "encoders.rna.gene_shift.shift" in trainable
    query_model.train(max_epochs=3, early_stopping=False, progress_bar=False)
    encoder = query_model.module.encoders["rna"]
    shift = encoder.gene_shift.shift.detach()
    assert shift.abs().max() > 0  # it learned
    # Oracle: the first hidden layer read densely, log1p(x) + shift at the nonzero counts.
    x = torch.tensor([[0.0, 3.0, 1.0] + [0.0] * (query.n_vars - 3), [2.0] + [0.0] * (query.n_vars - 1)])
    counts = SparseBatch.from_dense(x)
    new_batch = torch.tensor([2, 2])
    reference_batch = torch.tensor([0, 0])
    log = torch.log1p(x) + torch.where(x > 0, shift[0], torch.zeros_like(x))
    with torch.no_grad():
        encoder.eval()
        got = encoder(counts, batch_index=new_batch)
        h = log @ encoder.input_weight + encoder.input_bias + encoder.batch_shift.shift[0]
        h = encoder.input_activation(h)
        want = encoder.head(h).chunk(2, dim=-1)[0]
        torch.testing.assert_close(got[0], want)
        # Reference-batch cells read their counts unshifted: the reference's encoder, bitwise.
        assert torch.equal(
            encoder(counts, batch_index=reference_batch)[0], reference.module.encoders["rna"](counts)[0]
        )
    # The reference's cells embed exactly as in the reference; the shift is saved and loaded.
    assert np.array_equal(query_model.get_latent_representation(ref), reference.get_latent_representation())
    query_model.save(tmp_path / "query")
    loaded = scamort.Model.load(tmp_path / "query", query)
    assert torch.equal(loaded.module.encoders["rna"].gene_shift.shift, encoder.gene_shift.shift)
    assert np.array_equal(loaded.get_latent_representation(), query_model.get_latent_representation())
