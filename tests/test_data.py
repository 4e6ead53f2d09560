"""CSR tensors, minibatch gathering, the registry and feature alignment."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scamort.data import Modality, Registry, build_registry, encode_cells
from scamort.data.cell_data import ModalityTensors
from scamort.errors import InputError


def _random_csr(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.poisson(0.4, size=(30, 12)).astype(np.float32)
    dense[5] = 0
    return sp.csr_matrix(dense)


def test_take_and_rows_reproduce_scipy_slicing() -> None:
    matrix = _random_csr()
    tensors = ModalityTensors.from_csr(matrix, np.ones(30, dtype=bool))
    order = np.random.default_rng(1).permutation(30)
    taken = tensors.take(torch.as_tensor(order))
    batch = taken.rows(4, 17)
    expected = matrix[order[4:17]].toarray()
    np.testing.assert_array_equal(batch.to_dense().numpy(), expected)
    assert batch.row.tolist() == sorted(batch.row.tolist())
    np.testing.assert_allclose(
        batch.log_factorial.numpy(),
        np.array([sum(np.log(np.arange(1, v + 1)).sum() for v in row) for row in expected]),
        rtol=1e-5,
    )
    library = np.log(np.maximum(matrix.sum(1).A1, 1))
    np.testing.assert_allclose(taken.log_library.numpy(), library[order], rtol=1e-6)


def test_sparse_batch_repeat_matches_dense_repeat() -> None:
    tensors = ModalityTensors.from_csr(_random_csr(2), np.ones(30, dtype=bool))
    batch = tensors.rows(3, 9)
    np.testing.assert_array_equal(batch.repeat(3).to_dense().numpy(), batch.to_dense().repeat(3, 1).numpy())


def test_registry_round_trips_through_json(counts_adata) -> None:
    modality = Modality(layer="counts")
    registry = build_registry(
        {"rna": (modality, list(counts_adata.var_names))},
        counts_adata,
        batch_key="batch",
        labels_key="cell_type",
        categorical_covariate_keys=None,
        continuous_covariate_keys=["score"],
    )
    assert Registry.from_dict(json.loads(json.dumps(registry.to_dict()))) == registry
    assert registry.batch_categories == ("b0", "b1")


def test_reordered_genes_are_aligned_by_name_and_missing_genes_refused(counts_adata) -> None:
    registry = build_registry(
        {"rna": (Modality(), list(counts_adata.var_names))},
        counts_adata,
        batch_key=None,
        labels_key=None,
        categorical_covariate_keys=None,
        continuous_covariate_keys=None,
    )
    reference = encode_cells(counts_adata, registry).modalities["rna"]
    shuffled = counts_adata[:, np.random.default_rng(0).permutation(counts_adata.n_vars)]
    aligned = encode_cells(shuffled, registry).modalities["rna"]
    index = torch.arange(counts_adata.n_obs)
    np.testing.assert_array_equal(
        aligned.take(index).rows(0, 50).to_dense().numpy(),
        reference.take(index).rows(0, 50).to_dense().numpy(),
    )
    with pytest.raises(InputError, match="lacks 10 of the model's 60 features"):
        encode_cells(counts_adata[:, 10:], registry)
