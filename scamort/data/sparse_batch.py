"""A minibatch of count rows as coordinates: the form both encoders and likelihoods consume."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SparseBatch"]


@dataclass(frozen=True)
class SparseBatch:
    """Counts of ``n_rows`` cells for one modality, as sorted-by-row nonzero coordinates.

    Attributes
    ----------
    row, col
        Coordinates of the nonzero entries, shape ``(nnz,)`` each (int64), ``row`` non-decreasing.
    values
        The nonzero counts, shape ``(nnz,)``.
    row_offsets
        Position in ``values`` where each row starts, shape ``(n_rows,)`` (int64).
    n_features
        Number of columns.
    log_factorial
        ``sum_g lgamma(x_g + 1)`` per row, shape ``(n_rows,)`` (float64): the count-only normalising
        constant of the Poisson-family likelihoods, computed once per cell when the data are loaded.
    """

    row: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    row_offsets: torch.Tensor
    n_features: int
    log_factorial: torch.Tensor

    @property
    def n_rows(self) -> int:
        """Number of cells in the batch."""
        return self.row_offsets.shape[0]

    @property
    def flat_index(self) -> torch.Tensor:
        """Positions of the nonzero entries in a row-major ``(n_rows, n_features)`` matrix, ``(nnz,)``."""
        return self.row * self.n_features + self.col

    def to_dense(self) -> torch.Tensor:
        """The counts as a dense matrix, shape ``(n_rows, n_features)``."""
        dense = self.values.new_zeros(self.n_rows, self.n_features)
        dense.view(-1)[self.flat_index] = self.values
        return dense

    def repeat(self, n: int) -> SparseBatch:
        """All rows repeated ``n`` times (row-block major), shape ``(n * n_rows, n_features)``."""
        nnz = self.values.shape[0]
        copies = torch.arange(n, device=self.row.device)
        return SparseBatch(
            row=(self.row.unsqueeze(0) + copies.unsqueeze(1) * self.n_rows).reshape(-1),
            col=self.col.repeat(n),
            values=self.values.repeat(n),
            row_offsets=(self.row_offsets.unsqueeze(0) + copies.unsqueeze(1) * nnz).reshape(-1),
            n_features=self.n_features,
            log_factorial=self.log_factorial.repeat(n),
        )

    @classmethod
    def from_dense(cls, dense: torch.Tensor) -> SparseBatch:
        """Build from a dense count matrix of shape ``(n_rows, n_features)`` (tests, sampling)."""
        row, col = torch.nonzero(dense, as_tuple=True)
        values = dense[row, col]
        counts_per_row = torch.bincount(row, minlength=dense.shape[0])
        log_factorial = torch.zeros(dense.shape[0], dtype=torch.float64, device=dense.device)
        log_factorial.index_add_(0, row, torch.lgamma(values.double() + 1))
        return cls(
            row=row,
            col=col,
            values=values,
            row_offsets=torch.cumsum(counts_per_row, 0) - counts_per_row,
            n_features=dense.shape[1],
            log_factorial=log_factorial,
        )
