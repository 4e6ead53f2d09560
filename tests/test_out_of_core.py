"""Out-of-core reading of every modality and store: backed .h5ad layers and .obsm, backed .h5mu (cells
missing a modality), Zarr; prefetching; bounded reads. Each is checked against the same data in memory."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scamort
from scamort.data.backed import BackedCellData
from scamort.data.disk import RowSource
from scamort.scale import open_zarr
from tests.conftest import make_counts

OPTIONS = {"max_epochs": 3, "kl_warmup_epochs": 1, "early_stopping": False, "progress_bar": False}
CITE = {
    "rna": scamort.Modality(layer="counts"),
    "protein": scamort.Modality(obsm_key="protein", likelihood="nbmixture"),
}


def _cite(n_cells: int = 200, seed: int = 3, obsm: str = "frame") -> ad.AnnData:
    """RNA counts in a layer (a normalised X beside them) and protein counts in .obsm."""
    adata = make_counts(n_cells=n_cells, seed=seed)
    adata.X = sp.csr_matrix(np.log1p(adata.layers["counts"].toarray()), dtype=np.float32)
    rng = np.random.default_rng(seed)
    protein = rng.poisson(rng.gamma(2.0, 20.0, size=(n_cells, 7))).astype(np.float32) + 1
    if obsm == "frame":
        adata.obsm["protein"] = pd.DataFrame(
            protein, index=adata.obs_names, columns=[f"p{i}" for i in range(7)]
        )
    else:
        adata.obsm["protein"] = sp.csr_matrix(protein) if obsm == "sparse" else protein
    return adata


def _weights(model: scamort.Model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.module.state_dict().items()}


def _assert_same_weights(first: scamort.Model, second: scamort.Model) -> None:
    a, b = _weights(first), _weights(second)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _seeded(query, *args, **kwargs):
    """A query after seeding torch's global generator (the ELBO draws from the posterior)."""
    torch.manual_seed(0)
    return query(*args, **kwargs)


def _assert_same_queries(on_disk: scamort.Model, in_memory: scamort.Model, modality: str, data=None) -> None:
    """Latent, ELBO, imputation and refined latents agree (same weights: float tolerance only)."""
    disk_data, memory_data = data if data is not None else (None, None)
    np.testing.assert_allclose(
        on_disk.get_latent_representation(disk_data),
        in_memory.get_latent_representation(memory_data),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        _seeded(on_disk.get_elbo, disk_data), _seeded(in_memory.get_elbo, memory_data), rtol=1e-6
    )
    pd.testing.assert_frame_equal(
        _seeded(on_disk.impute, disk_data, modality=modality),
        _seeded(in_memory.impute, memory_data, modality=modality),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        on_disk.refine(disk_data, n_steps=3).mean,
        in_memory.refine(memory_data, n_steps=3).mean,
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize("obsm", ["frame", "dense", "sparse"])
def test_backed_layer_and_obsm_train_and_query_like_in_memory(tmp_path, obsm) -> None:
    adata = _cite(obsm=obsm)
    adata.write_h5ad(tmp_path / "cite.h5ad")
    backed = ad.read_h5ad(tmp_path / "cite.h5ad", backed="r")
    modalities = CITE if obsm == "frame" else {**CITE, "protein": scamort.Modality(obsm_key="protein")}
    on_disk = scamort.Model(backed, modalities=modalities, seed=4)
    in_memory = scamort.Model(adata, modalities=modalities, seed=4)
    assert isinstance(on_disk._data, BackedCellData)
    _assert_same_weights(on_disk, in_memory)  # the same data-driven start (nbmixture background)
    on_disk.train(**OPTIONS)
    in_memory.train(**OPTIONS)
    # fewer cells than one pool: the same shuffle, hence bit-identical training
    _assert_same_weights(on_disk, in_memory)
    _assert_same_queries(on_disk, in_memory, "protein")


def _mudata(n_cells: int = 240, shuffled: bool = True) -> md.MuData:
    """RNA for every cell; protein for two thirds of them (cells absent from it are missing the
    modality), stored in another order than the MuData's if ``shuffled``."""
    rna = make_counts(n_cells=n_cells, seed=8)
    rng = np.random.default_rng(8)
    measured = np.flatnonzero(rng.random(n_cells) < 0.67)
    measured = rng.permutation(measured) if shuffled else measured
    protein = rng.poisson(rng.gamma(2.0, 20.0, size=(measured.size, 6))).astype(np.float32) + 1
    prot = ad.AnnData(
        X=sp.csr_matrix(protein),
        obs=pd.DataFrame(index=rna.obs_names[measured]),
        var=pd.DataFrame(index=[f"p{i}" for i in range(6)]),
    )
    mdata = md.MuData({"rna": rna, "prot": prot})
    mdata.obs["batch"] = rna.obs["batch"].to_numpy()
    return mdata


MU = {"rna": scamort.Modality(), "prot": scamort.Modality(likelihood="nbmixture")}


def test_backed_mudata_with_cells_missing_a_modality_matches_in_memory(tmp_path) -> None:
    mdata = _mudata()
    mdata.write(tmp_path / "cite.h5mu")
    backed = md.read_h5mu(tmp_path / "cite.h5mu", backed=True)
    in_memory_data = md.read_h5mu(tmp_path / "cite.h5mu")
    on_disk = scamort.Model(backed, modalities=MU, batch_key="batch", seed=5)
    in_memory = scamort.Model(in_memory_data, modalities=MU, batch_key="batch", seed=5)
    assert isinstance(on_disk._data, BackedCellData)
    present = on_disk._data.modalities["prot"].present.numpy()
    assert 0 < present.sum() < present.size
    on_disk.train(**OPTIONS)
    in_memory.train(**OPTIONS)
    _assert_same_weights(on_disk, in_memory)
    _assert_same_queries(on_disk, in_memory, "prot")
    # queries on another backed object of the same file, and training on one modality, read from disk too
    other = md.read_h5mu(tmp_path / "cite.h5mu", backed=True)
    _assert_same_queries(on_disk, in_memory, "prot", data=(other, in_memory_data))
    on_disk.train(**{**OPTIONS, "max_epochs": 2}, pretrain_modality="rna")


def test_zarr_store_trains_and_queries_like_in_memory(tmp_path) -> None:
    adata = make_counts(n_cells=250, seed=9)
    adata.write_zarr(tmp_path / "cells.zarr")
    on_zarr = open_zarr(tmp_path / "cells.zarr")
    assert isinstance(on_zarr.X, ad.abc.CSRDataset)
    for layer in (None, "counts"):
        on_disk = scamort.Model(on_zarr, layer=layer, seed=6)
        in_memory = scamort.Model(adata, layer=layer, seed=6)
        assert isinstance(on_disk._data, BackedCellData)
        on_disk.train(**OPTIONS)
        in_memory.train(**OPTIONS)
        _assert_same_weights(on_disk, in_memory)
        _assert_same_queries(on_disk, in_memory, "rna")


def _many_pools(tmp_path, prefetch: int) -> scamort.Model:
    adata = make_counts(n_cells=700, seed=10)
    adata.write_h5ad(tmp_path / f"cells{prefetch}.h5ad")
    model = scamort.Model(ad.read_h5ad(tmp_path / f"cells{prefetch}.h5ad", backed="r"), seed=7)
    model._data = model._data.rechunked(64, pool_chunks=2, prefetch=prefetch)
    return model


def test_prefetch_trains_bit_identical_weights(tmp_path) -> None:
    """Reading ahead on a thread changes when rows are read, never which minibatches are made."""
    models = [_many_pools(tmp_path, prefetch) for prefetch in (0, 1, 3)]
    for model in models:
        model.train(**{**OPTIONS, "batch_size": 32})
    _assert_same_weights(models[0], models[1])
    _assert_same_weights(models[0], models[2])
    assert models[0].history["validation_elbo"].iloc[-1] > models[0].history["validation_elbo"].iloc[0]


def test_default_prefetch_reads_ahead_only_with_a_core_to_spare(monkeypatch) -> None:
    """One pool ahead when minibatches go to an accelerator or a core is free for the reader thread;
    none when torch's threads already use every core the process may run on."""
    from scamort.data import backed

    monkeypatch.setattr(backed, "available_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert backed.default_prefetch(torch.device("cpu")) == 0
    assert backed.default_prefetch(torch.device("cuda")) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert backed.default_prefetch(torch.device("cpu")) == 1


def test_first_seen_blocks_scanned_in_parts_match_one_pass(tmp_path, monkeypatch) -> None:
    """Cutting an epoch's order into pools a part at a time gives the positions a single np.unique
    over the whole order gives."""
    from scamort.data import backed

    model = _many_pools(tmp_path, 0)
    data = model._data
    order = data.epoch_order(torch.arange(data.n_cells), torch.Generator().manual_seed(3))
    whole = np.sort(np.unique((order // data.chunk_size).numpy(), return_index=True)[1])
    monkeypatch.setattr(backed, "_ENTRIES_PER_SCAN", 37)
    np.testing.assert_array_equal(data._first_seen_blocks(order), whole)


def test_out_of_core_reads_only_blocks_of_rows(tmp_path, monkeypatch) -> None:
    """Every read is one block of at most chunk_size rows, each block once per pass, and nothing is ever
    read whole; an epoch reads each stored row about once (training plus validation) when each modality
    stores its cells in the MuData's order (a shuffled order is read correctly, only more often)."""
    mdata = _mudata(n_cells=600, shuffled=False)
    mdata.write(tmp_path / "cite.h5mu")
    model = scamort.Model(md.read_h5mu(tmp_path / "cite.h5mu", backed=True), modalities=MU, seed=1)
    model._data = model._data.rechunked(50, pool_chunks=2, prefetch=1)
    reads: list[int] = []
    block = RowSource.block

    def counted(self, start, stop):
        reads.append(stop - start)
        return block(self, start, stop)

    def refuse(self):
        raise AssertionError("read whole")

    monkeypatch.setattr(RowSource, "block", counted)
    monkeypatch.setattr(ad.abc.CSRDataset, "to_memory", refuse)
    model.train(**{**OPTIONS, "max_epochs": 2, "batch_size": 25})
    assert max(reads) <= 50
    n_prot = md.read_h5mu(tmp_path / "cite.h5mu").mod["prot"].n_obs
    # per epoch, training and validation each read every RNA block once (protein blocks, not aligned
    # with the MuData's, up to twice)
    assert sum(reads) <= 2 * (2 * 600 + 4 * n_prot)
    reads.clear()
    model.get_latent_representation()
    assert max(reads) <= 50 and sum(reads) <= 600 + n_prot  # sequential queries read each block once


def test_out_of_core_bad_input_is_one_sentence(tmp_path) -> None:
    adata = _cite()
    adata.write_h5ad(tmp_path / "cite.h5ad")
    backed = ad.read_h5ad(tmp_path / "cite.h5ad", backed="r")
    with pytest.raises(scamort.InputError, match=r"^Modality 'rna': layer 'raw' not found in adata\.layers"):
        scamort.Model(backed, modalities={"rna": scamort.Modality(layer="raw")})
    with pytest.raises(scamort.InputError, match=r"^Modality 'protein': obsm key 'adt' not found"):
        scamort.Model(backed, modalities={"protein": scamort.Modality(obsm_key="adt")})
    mdata = _mudata()
    mdata.write(tmp_path / "cite.h5mu")
    on_disk = md.read_h5mu(tmp_path / "cite.h5mu", backed=True)
    with pytest.raises(
        scamort.InputError, match=r"^Modality 'atac' is not in the MuData \(it has rna, prot\)"
    ):
        scamort.Model(on_disk, modalities={"atac": scamort.Modality()})
    with pytest.raises(scamort.InputError, match=r"layer 'counts' not found in mdata\.mod\['prot'\]\.layers"):
        scamort.Model(on_disk, modalities={"prot": scamort.Modality(layer="counts")})
    with pytest.raises(scamort.InputError, match=r"is not an AnnData Zarr store|is not a Zarr store"):
        open_zarr(tmp_path / "cite.h5ad")
    with pytest.raises(scamort.InputError, match=r"does not exist"):
        open_zarr(tmp_path / "missing.zarr")


@pytest.mark.parametrize("batch_size", [32, 50, 200])
def test_minibatches_across_pools_are_those_of_in_memory_data(tmp_path, batch_size) -> None:
    """Pools of any size and minibatches spanning two of them: the same minibatches, in the same order,
    as the in-memory data gives for the same order of cells."""
    mdata = _mudata(n_cells=500, shuffled=True)
    mdata.write(tmp_path / "cite.h5mu")
    on_disk = scamort.Model(md.read_h5mu(tmp_path / "cite.h5mu", backed=True), modalities=MU)._data
    on_disk = on_disk.rechunked(40, pool_chunks=3, prefetch=1)
    in_memory = scamort.Model(md.read_h5mu(tmp_path / "cite.h5mu"), modalities=MU)._data
    order = on_disk.epoch_order(torch.arange(3, 490), torch.Generator().manual_seed(0))
    pairs = list(zip(on_disk.iterate(order, batch_size), in_memory.iterate(order, batch_size), strict=True))
    assert len(pairs) == -(-order.numel() // batch_size)
    for disk, memory in pairs:
        for name in MU:
            a, b = disk.modalities[name], memory.modalities[name]
            assert torch.equal(a.counts.to_dense(), b.counts.to_dense())
            for field in ("log_library", "present"):
                assert torch.equal(getattr(a, field), getattr(b, field))
            assert torch.equal(a.counts.log_factorial, b.counts.log_factorial)
        assert torch.equal(disk.batch_index, memory.batch_index)
