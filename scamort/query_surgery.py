"""The weights of a query model (:meth:`scamort.Model.load_query_data`): frozen reference rows, new rows.

A query model is the reference's VAE built for more batch (and covariate) categories. Every weight
indexed by a category (the decoders' and library heads' covariate embeddings, gene-batch dispersions,
protein backgrounds, library-size variances) gets one row per new category; everything else is the
reference's and frozen. A weight with new rows is split by a parametrization: its reference rows are a
buffer (no gradient, no optimizer, no weight decay can move them) concatenated with a parameter of the
new rows, so ``module.weight`` reads as before. Each encoder can get a :class:`GeneShift` (a learned
per-new-batch, per-feature shift of the ``log1p`` counts it reads: the mapping default) and a
:class:`BatchShift` (a learned vector per new batch added to its first hidden layer), so the frozen
encoders can absorb a query batch's effect; cells of reference batches bypass both (their embedding is
bitwise the reference's).

``query_mapping`` (the dict a query model records in ``init_params``) says which weights are split and
how many reference rows each keeps, the number of reference batches and which encoder shifts are learned;
:func:`prepare_query_module` applies it to a freshly built VAE (at mapping and at loading alike).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from scamort.errors import InputError
from scamort.module import VAE
from scamort.nn.encoder import GaussianEncoder

__all__ = [
    "BatchShift",
    "FrozenRows",
    "GeneShift",
    "grown_weights",
    "prepare_query_module",
    "query_state_dict",
    "trainable_parameters",
]


class FrozenRows(nn.Module):
    """Parametrization ``weight = cat([reference rows (buffer), new rows (parameter)])`` along dim 0.

    Parameters
    ----------
    reference
        The reference rows ``(n_reference, ...)``; kept as a buffer (saved, never trained).
    """

    def __init__(self, reference: torch.Tensor) -> None:
        super().__init__()
        self.reference: torch.Tensor
        self.register_buffer("reference", reference.detach().clone())

    def forward(self, new_rows: torch.Tensor) -> torch.Tensor:
        """The whole weight ``(n_reference + n_new, ...)`` from the new rows ``(n_new, ...)``."""
        return torch.cat([self.reference, new_rows], dim=0)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The new rows of a whole weight (what the parameter holds)."""
        return weight[self.reference.shape[0] :]


class BatchShift(nn.Module):
    """A learned vector per new batch added to an encoder's first hidden layer (zeros at the start).

    Parameters
    ----------
    n_reference
        Batches of the reference (codes ``< n_reference``): their cells pass unchanged.
    n_new, n_hidden
        New batches and the width of the layer shifted.
    """

    def __init__(self, n_reference: int, n_new: int, n_hidden: int) -> None:
        super().__init__()
        self.n_reference = n_reference
        self.shift = nn.Parameter(torch.zeros(n_new, n_hidden))

    def forward(self, h: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """``h`` ``(batch, n_hidden)`` plus each new-batch cell's shift (``batch_index`` ``(batch,)``)."""
        new = batch_index >= self.n_reference
        rows = (batch_index - self.n_reference).clamp(min=0)
        return torch.where(new.unsqueeze(-1), h + self.shift[rows], h)


class GeneShift(nn.Module):
    """A learned per-new-batch, per-feature shift of the ``log1p`` counts an encoder reads (zero at first).

    A capture effect that differs between genes multiplies a gene's counts by a factor, i.e. shifts its
    ``log1p`` counts where they are not zero; the frozen encoder's first layer cannot undo that (a
    hidden-layer shift is the same for every cell of the batch). The shift applies to the measured
    nonzero counts only (a zero stays zero).

    Parameters
    ----------
    n_reference
        Batches of the reference (codes ``< n_reference``): their cells pass unchanged.
    n_new, n_input
        New batches and the number of features of the modality.
    """

    def __init__(self, n_reference: int, n_new: int, n_input: int) -> None:
        super().__init__()
        self.n_reference = n_reference
        self.shift = nn.Parameter(torch.zeros(n_new, n_input))

    def forward(
        self, values: torch.Tensor, row: torch.Tensor, col: torch.Tensor, batch_index: torch.Tensor
    ) -> torch.Tensor:
        """``values`` ``(nnz,)`` (log1p counts at ``row``, ``col``) plus the shift of each row's new batch."""
        cell_batch = batch_index[row]
        new = cell_batch >= self.n_reference
        rows = (cell_batch - self.n_reference).clamp(min=0)
        return torch.where(new, values + self.shift[rows, col], values)


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The submodule holding parameter ``name`` (a dotted state-dict name) and its attribute name."""
    path, _, attribute = name.rpartition(".")
    return (module.get_submodule(path) if path else module), attribute


def grown_weights(reference: Mapping[str, torch.Tensor], module: VAE) -> dict[str, int]:
    """Weights of ``module`` (built for the query's categories) with more rows than the reference's.

    Parameters
    ----------
    reference
        The reference VAE's state dict.
    module
        A VAE built for the query (same architecture, more categories), not yet split.

    Returns
    -------
    dict
        State-dict name -> number of reference rows.
    """
    grown = {}
    for name, tensor in module.state_dict().items():
        old = reference[name]
        if old.shape != tensor.shape:
            if old.shape[1:] != tensor.shape[1:] or old.shape[0] > tensor.shape[0]:
                raise ValueError(f"{name}: {tuple(old.shape)} cannot grow into {tuple(tensor.shape)}")
            grown[name] = int(old.shape[0])
    return grown


def prepare_query_module(module: VAE, mapping: Mapping[str, Any]) -> None:
    """Turn ``module`` (built for the query's categories) into a query module, in place.

    Splits each weight named in ``mapping["frozen_rows"]`` (:class:`FrozenRows`), adds a
    :class:`BatchShift` to every encoder when ``mapping["encoder_shift"]`` and a :class:`GeneShift`
    when ``mapping.get("gene_shift")`` (absent in folders saved before it existed), and freezes every other
    weight. Values are placeholders until a state dict is loaded (:func:`query_state_dict`).

    Raises
    ------
    InputError
        If ``mapping`` does not fit the module (a damaged or edited saved query model).
    """
    problem = _mapping_problem(module, mapping)
    if problem is not None:
        raise InputError(
            f"The saved query mapping does not fit its model ({problem}); the folder is damaged or was "
            "edited: map the query again."
        )
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    for name, n_reference in mapping["frozen_rows"].items():
        owner, attribute = _owner(module, name)
        weight = getattr(owner, attribute)
        parametrize.register_parametrization(owner, attribute, FrozenRows(weight[:n_reference]), unsafe=True)
        original = owner.get_parameter(f"parametrizations.{attribute}.original")
        original.requires_grad_(True)
    n_reference, n_batch = int(mapping["reference_batches"]), module.config.n_batch
    if mapping["encoder_shift"] and n_batch > n_reference:
        for encoder in module.encoders.values():
            assert isinstance(encoder, GaussianEncoder)
            encoder.batch_shift = BatchShift(n_reference, n_batch - n_reference, encoder.input_bias.shape[0])
    if mapping.get("gene_shift", False) and n_batch > n_reference:
        for encoder in module.encoders.values():
            assert isinstance(encoder, GaussianEncoder)
            n_input = encoder.input_weight.shape[0]
            encoder.gene_shift = GeneShift(n_reference, n_batch - n_reference, n_input)


def _mapping_problem(module: VAE, mapping: Mapping[str, Any]) -> str | None:
    rows = mapping.get("frozen_rows")
    if not isinstance(rows, dict) or not isinstance(mapping.get("encoder_shift"), bool):
        return "it lacks frozen_rows or encoder_shift"
    if not isinstance(mapping.get("gene_shift", False), bool):
        return f"gene_shift is {mapping['gene_shift']!r}"
    reference_batches = mapping.get("reference_batches")
    if not isinstance(reference_batches, int) or not 1 <= reference_batches <= module.config.n_batch:
        return f"reference_batches is {reference_batches!r}"
    state = module.state_dict()
    for name, n_reference in rows.items():
        if (
            name not in state
            or not isinstance(n_reference, int)
            or not 1 <= n_reference < state[name].shape[0]
        ):
            return f"weight {name!r} with {n_reference!r} reference rows"
    return None


def query_state_dict(reference: Mapping[str, torch.Tensor], module: VAE) -> dict[str, torch.Tensor]:
    """A state dict for the query ``module`` (after :func:`prepare_query_module`) from the reference's.

    Unsplit weights are the reference's; a split weight keeps the reference's rows in its buffer and
    starts each new row at the mean of the reference rows (a typical reference batch: what a new batch
    decodes as until trained, and for good when the query lacks the modality); shifts start at zero.
    """
    out = {}
    for name, current in module.state_dict().items():
        if name in reference:
            out[name] = reference[name].clone()
        elif name.endswith(".original"):  # "<path>.parametrizations.<attr>.original"
            stem = name.removesuffix(".original")
            old = reference[stem.replace(".parametrizations.", ".")]
            mean = old.mean(0, keepdim=True).to(current.dtype)
            out[name] = mean.expand_as(current).clone()
        elif name.endswith(".0.reference"):
            stem = name.removesuffix(".0.reference")
            old = reference[stem.replace(".parametrizations.", ".")]
            out[name] = old.clone()
        else:  # new weights (encoder shifts): their zero start
            out[name] = current.clone()
    return out


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should see: those that require gradients."""
    return [parameter for parameter in module.parameters() if parameter.requires_grad]
