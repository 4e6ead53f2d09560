"""In-memory data without copies the size of the counts: encoding, blockwise checks, epoch gathering."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

import scamort
from scamort.data import cell_data
from scamort.data.cell_data import CellData, ModalityTensors
from scamort.data.reading import _dense_to_csr
from scamort.data.validation import check_counts
from scamort.errors import InputError
from tests.conftest import make_counts


def _sparse_adata(n_cells: int, n_genes: int, per_cell: int, seed: int = 0) -> ad.AnnData:
    """Cells with ``per_cell`` distinct nonzero genes each, counts 1..20, CSR float32."""
    rng = np.random.default_rng(seed)
    stride = (
        n_genes // per_cell
    )  # one gene drawn from each of ``per_cell`` consecutive bins: sorted, distinct
    columns = np.arange(per_cell) * stride + rng.integers(0, stride, size=(n_cells, per_cell))
    values = rng.integers(1, 21, size=n_cells * per_cell).astype(np.float32)
    indptr = np.arange(0, n_cells * per_cell + 1, per_cell)
    matrix = sp.csr_matrix((values, columns.ravel().astype(np.int32), indptr), shape=(n_cells, n_genes))
    return ad.AnnData(matrix, obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]))


def _csr_bytes(matrix: sp.csr_matrix) -> int:
    return matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes


def test_model_construction_allocates_one_copy_of_the_counts() -> None:
    # tracemalloc sees numpy's allocations: reading, checking and encoding the counts must make
    # one float32 copy (kept by the tensors) and otherwise only blocks. Before, they made five.
    adata = _sparse_adata(40_000, 500, per_cell=100)
    size = _csr_bytes(adata.X)
    scamort.Model(adata.copy())  # pay one-time allocations (imports, caches) outside the window
    tracemalloc.start()
    model = scamort.Model(adata)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1.5 * size, f"peak {peak / size:.2f}× the CSR"
    tensors = model._data.modalities["rna"]
    assert tensors.indices.dtype == torch.int32 and tensors.values.dtype == torch.float32


def test_encoded_counts_share_the_users_arrays_and_are_exact() -> None:
    # a canonical float32 CSR is read without a copy (the model's share of memory stays below the CSR)
    adata = _sparse_adata(300, 40, per_cell=7, seed=1)
    expected = adata.X.copy()
    model = scamort.Model(adata)
    tensors = model._data.modalities["rna"]
    assert np.shares_memory(tensors.values.numpy(), adata.X.data)
    encoded = sp.csr_matrix(
        (tensors.values.numpy(), tensors.indices.numpy(), tensors.indptr.numpy()), shape=expected.shape
    )
    assert (encoded != expected).nnz == 0
    lgamma = np.array(
        [np.sum([np.log(np.arange(1, v + 1)).sum() for v in row]) for row in expected.toarray()]
    )
    np.testing.assert_allclose(tensors.log_factorial.numpy(), lgamma, rtol=1e-10)


def test_counts_changed_in_place_after_model_are_refused() -> None:
    adata = _sparse_adata(300, 40, per_cell=7, seed=1)
    model = scamort.Model(adata)
    adata.X.data[:5] += 1  # the user changes their counts in place (e.g. normalises) after Model()
    with pytest.raises(InputError, match="changed in place"):
        model.train(max_epochs=1, progress_bar=False)
    with pytest.raises(InputError, match="changed in place"):
        model.get_latent_representation()
    adata.X.data[:5] -= 1  # restored: usable again
    assert model.get_latent_representation().shape == (300, 10)


def test_integer_counts_are_copied_and_not_refused_after_a_change() -> None:
    adata = _sparse_adata(300, 40, per_cell=7, seed=1)
    adata.X = adata.X.astype(np.int64)
    model = scamort.Model(adata)
    assert not np.shares_memory(model._data.modalities["rna"].values.numpy(), adata.X.data)
    adata.X.data[:] = 0  # a private float32 copy: the model keeps its counts
    assert model.get_latent_representation().shape == (300, 10)


def test_log_factorial_in_blocks_is_bitwise_the_whole_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = _sparse_adata(500, 60, per_cell=13, seed=2).X
    whole = ModalityTensors.from_csr(matrix, np.ones(500, dtype=bool))
    monkeypatch.setattr(cell_data, "_ENTRIES_PER_BLOCK", 50)  # many blocks, rows split across none
    blocks = ModalityTensors.from_csr(matrix, np.ones(500, dtype=bool))
    assert torch.equal(whole.log_factorial, blocks.log_factorial)


def test_dense_to_csr_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    dense = rng.poisson(0.7, size=(40_000, 9)).astype(np.float64)
    dense[7] = 0
    ours, theirs = _dense_to_csr(dense), sp.csr_matrix(dense)
    assert ours.has_canonical_format and ours.dtype == np.float64
    np.testing.assert_array_equal(ours.indptr, theirs.indptr)
    np.testing.assert_array_equal(ours.indices, theirs.indices)
    np.testing.assert_array_equal(ours.data, theirs.data)


def test_checks_in_blocks_point_at_the_first_bad_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from scamort.data import validation

    monkeypatch.setattr(validation, "_CHECK_BLOCK", 4)
    dense = np.ones((6, 5), dtype=np.float32)
    dense[3, 2], dense[5, 4] = 0.5, 1.5
    with pytest.raises(InputError, match=r"2 non-integer entries \(first at cell 'c3', feature 'g2'\)"):
        check_counts(
            sp.csr_matrix(dense),
            where="adata.X",
            cells=[f"c{i}" for i in range(6)],
            features=[f"g{j}" for j in range(5)],
        )


def test_iterate_gathers_in_blocks_and_yields_the_same_minibatches(monkeypatch: pytest.MonkeyPatch) -> None:
    data = scamort.Model(make_counts(n_cells=240, seed=4))._data
    assert isinstance(data, CellData)
    index = torch.randperm(240, generator=torch.Generator().manual_seed(0))[:230]
    gathered: list[int] = []
    take = CellData.take

    def spy(self: CellData, rows: torch.Tensor) -> CellData:
        gathered.append(rows.shape[0])
        return take(self, rows)

    per_cell = data.modalities["rna"].indices.shape[0] / 240
    monkeypatch.setattr(cell_data, "GATHER_ENTRIES", int(64 * per_cell))  # about 64 cells' entries
    monkeypatch.setattr(CellData, "take", spy)
    batches = list(data.iterate(index, 20))
    assert gathered == [60, 60, 60, 50]  # whole minibatches per block, never the whole epoch at once
    monkeypatch.setattr(CellData, "take", take)
    assert [b.size for b in batches] == [20] * 11 + [10]
    for number, batch in enumerate(batches):
        reference = data.minibatch(index[number * 20 : (number + 1) * 20]).modalities["rna"]
        got = batch.modalities["rna"]
        for field in ("row", "col", "values", "row_offsets", "log_factorial"):
            assert torch.equal(getattr(got.counts, field), getattr(reference.counts, field)), field
        assert got.counts.col.dtype == torch.int64
        assert torch.equal(got.log_library, reference.log_library)


@given(
    st.lists(
        st.one_of(
            st.integers(0, 6000).map(float),
            st.floats(0.0, 1e7, allow_nan=False, allow_infinity=False),
        ),
        min_size=1,
        max_size=50,
    )
)
def test_tabled_log_factorials_are_bitwise_scipy(values: list[float]) -> None:
    """Whole counts below the table's end are looked up, everything else computed: every value is
    bitwise ``scipy.special.gammaln(x + 1)``."""
    from scipy.special import gammaln

    array = np.asarray(values, dtype=np.float64)
    np.testing.assert_array_equal(cell_data.lgamma_plus_one(array), gammaln(array + 1.0))
