"""Growing data sets, and out-of-core training from a backed .h5ad (every modality and store:
tests/test_out_of_core.py)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scamort
from scamort.scale import grow, grow_to_h5ad
from tests.conftest import make_counts

OPTIONS = {"max_epochs": 4, "kl_warmup_epochs": 1, "early_stopping": False, "progress_bar": False}


def test_grow_keeps_source_structure_and_thins_counts() -> None:
    source = make_counts(n_cells=100, seed=5)
    grown = grow(source, 1000, seed=1)
    assert grown.shape == (1000, source.n_vars)
    assert (np.diff(grown.X.indptr) > 0).all()
    data = grown.X.data
    assert (data == np.round(data)).all() and (data > 0).all()
    totals = np.asarray(grown.X.sum(1)).ravel()
    source_totals = np.asarray(source[grown.obs["source_cell"]].X.sum(1)).ravel()
    assert (totals <= source_totals).all()
    assert 0.5 < totals.sum() / source_totals.sum() < 0.9  # thinning keeps 50-100% of counts
    np.testing.assert_array_equal(
        grown.obs["cell_type"].to_numpy(), source.obs.loc[grown.obs["source_cell"], "cell_type"].to_numpy()
    )


def test_grow_to_h5ad_matches_grow(tmp_path) -> None:
    source = make_counts(n_cells=100, seed=5)
    path = grow_to_h5ad(source, 700, tmp_path / "grown.h5ad", seed=3, chunk_size=128)
    on_disk = ad.read_h5ad(path)
    in_memory = grow(source, 700, seed=3, chunk_size=128)
    np.testing.assert_array_equal(on_disk.X.toarray(), in_memory.X.toarray())
    assert list(on_disk.obs["source_cell"]) == list(in_memory.obs["source_cell"])


def test_backed_training_matches_in_memory_training(tmp_path) -> None:
    adata = make_counts(n_cells=300, seed=6)
    del adata.layers["counts"]
    adata.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    on_disk = scamort.Model(backed, seed=2)
    on_disk.train(**OPTIONS)
    in_memory = scamort.Model(adata, seed=2)
    in_memory.train(**OPTIONS)
    # a single chunk pool: the same shuffle, hence the same model
    np.testing.assert_allclose(
        on_disk.history["validation_elbo"], in_memory.history["validation_elbo"], rtol=1e-5
    )
    np.testing.assert_allclose(
        on_disk.get_latent_representation(), in_memory.get_latent_representation(), rtol=1e-4, atol=1e-5
    )
    # imputation reads the cells' library sizes from the one pass over the file, not the counts
    pd.testing.assert_frame_equal(on_disk.impute(), in_memory.impute(), rtol=1e-5)


def test_backed_training_reads_in_chunks(tmp_path) -> None:
    adata = make_counts(n_cells=600, seed=7)
    del adata.layers["counts"]
    adata.write_h5ad(tmp_path / "cells.h5ad")
    model = scamort.Model(ad.read_h5ad(tmp_path / "cells.h5ad", backed="r"))
    model._data = model._data.rechunked(64)  # many small chunks, pools of 4
    history = model.train(**{**OPTIONS, "max_epochs": 8})
    assert history["validation_elbo"].iloc[-1] > history["validation_elbo"].iloc[0]
    assert model.get_latent_representation().shape == (600, 10)


def test_backed_data_is_validated_chunk_by_chunk(tmp_path) -> None:
    adata = make_counts(n_cells=50)
    dense = adata.X.toarray()
    dense[7, 2] = 0.5
    adata.X = dense
    del adata.layers["counts"]
    adata.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(scamort.InputError, match=r"adata.X \(backed\) has 1 non-integer entries"):
        scamort.Model(ad.read_h5ad(tmp_path / "bad.h5ad", backed="r"))
