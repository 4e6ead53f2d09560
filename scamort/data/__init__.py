"""Data: modality specs, validation, the registry, tensors and minibatches."""

from scamort.data.cell_data import CellData, Minibatch, ModalityBatch, ModalityTensors
from scamort.data.encode import encode_cells
from scamort.data.modality import LIKELIHOODS, Modality
from scamort.data.registry import ModalityRegistry, Registry, build_registry
from scamort.data.sparse_batch import SparseBatch

__all__ = [
    "LIKELIHOODS",
    "CellData",
    "Minibatch",
    "Modality",
    "ModalityBatch",
    "ModalityRegistry",
    "ModalityTensors",
    "Registry",
    "SparseBatch",
    "build_registry",
    "encode_cells",
]
