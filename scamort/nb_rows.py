"""Per-cell negative-binomial log-likelihood with a hand-written backward pass.

The training step's dominant cost is elementwise work on dense ``(cells, genes)`` matrices. Autograd on
the NB formula allocates and fills several dense gradient buffers (one per gathered term). Here the
forward pass makes a few dense passes (``exp``, ``+``, ``log1p`` of ``mu / theta``, a matrix-vector
product) and the backward pass a few more, with the count-dependent terms touched only at the nonzero
entries. ``log p(0)`` is taken as ``-theta log1p(mu / theta)``, which stays exact in float32 when
``theta >> mu``. The result and the
gradients are exact (checked against autograd on the dense formula with ``gradcheck`` in the tests).

Precision for large counts: at a nonzero count ``x`` the terms ``lgamma(x + theta)``, ``lgamma(x + 1)``,
``x log(mu / (theta + mu))`` and ``theta log(theta / (theta + mu))`` are each of order ``x log x`` and
cancel to a log-probability of order ``log x``, so float32 cannot resolve them once ``x`` is in the
thousands. Every term at a nonzero entry is therefore evaluated in float64 (from the float32 parameters)
and left out of the dense float32 sum, which then holds only the zero entries (plain negative terms
that do not cancel); the per-cell result is float64, to be combined with the float64 ``lgamma(x + 1)``
sums. The gradients need no such care (they are differences of order ``theta``) and stay float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["negative_binomial_nonzero_log_prob", "negative_binomial_rows", "softmax_negative_binomial_rows"]


def negative_binomial_nonzero_log_prob(
    values: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor
) -> torch.Tensor:
    """``log NB(x; mu, theta) + lgamma(x + 1)`` at nonzero counts, in float64, shape ``(nnz,)``.

    ``lgamma(x + theta) - lgamma(theta) - theta log1p(mu / theta) - x log1p(theta / mu)``, each term from
    the float64 values of its float32 arguments (shape ``(nnz,)`` each), so that their cancellation is
    exact to float64 precision for every count scamort accepts.
    """
    x = values.double()
    log_mu = log_mu.double()
    log_theta = log_theta.double()
    theta = log_theta.exp()
    log_ratio = log_mu - log_theta
    log1p_ratio = F.softplus(log_ratio)  # log1p(mu / theta); log1p(theta / mu) = that - log(mu / theta)
    return torch.lgamma(x + theta) - torch.lgamma(theta) - (theta + x) * log1p_ratio + x * log_ratio


class _NegativeBinomialRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_mu, log_theta, row, col, values):
        n_features = log_mu.shape[1]
        theta = log_theta.exp()
        mu = log_mu.exp()
        theta_plus_mu = theta + mu
        # log((theta + mu) / theta): log p(0) = -theta log1p(mu / theta) does not cancel in float32
        # when theta >> mu, as theta (log theta - log(theta + mu)) does.
        log1p_ratio = torch.log1p(mu / theta)
        per_feature = log_theta.dim() == 1
        flat = row * n_features + col
        log1p_nz = log1p_ratio.reshape(-1)[flat]
        log1p_ratio.view(-1).index_fill_(0, flat, 0.0)  # the dense float32 sum: only zero counts
        at_zero = -(log1p_ratio @ theta) if per_feature else -(theta * log1p_ratio).sum(-1)
        log_theta_nz = log_theta[col] if per_feature else log_theta.reshape(-1)[flat]
        nonzero = negative_binomial_nonzero_log_prob(values, log_mu.reshape(-1)[flat], log_theta_nz)
        ctx.save_for_backward(log_theta, theta, mu, theta_plus_mu, log1p_ratio, log1p_nz, row, col, values)
        return at_zero.double().index_add(0, row, nonzero)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        log_theta, theta, mu, theta_plus_mu, log1p_ratio, log1p_nz, row, col, values = ctx.saved_tensors
        grad_out = grad_out.to(mu.dtype)
        n_features = mu.shape[1]
        per_feature = log_theta.dim() == 1
        flat = row * n_features + col
        ratio = theta / theta_plus_mu  # theta / (theta + mu), (rows, features)
        grad_out_nz = grad_out[row]
        ratio_nz = ratio.reshape(-1)[flat]
        grad_log_mu = grad_log_theta = None
        if ctx.needs_input_grad[0]:
            # d/dlog(mu): -theta mu / (theta + mu) everywhere, + x theta / (theta + mu) at nonzeros
            grad_log_mu = mu * ratio
            grad_log_mu.mul_(-grad_out.unsqueeze(1))
            grad_log_mu.reshape(-1).index_add_(0, flat, grad_out_nz * values * ratio_nz)
        if ctx.needs_input_grad[1]:
            theta_nz = theta[col] if per_feature else theta.reshape(-1)[flat]
            # (log1p_ratio holds zeros at the nonzeros: their share of -log1p(mu / theta) is added here)
            nonzero = grad_out_nz * (
                torch.digamma(values + theta_nz)
                - torch.digamma(theta_nz)
                - values * ratio_nz / theta_nz
                - log1p_nz
            )
            # d/dtheta at zero counts: log theta + 1 - log(theta + mu) - theta / (theta + mu)
            # = mu / (theta + mu) - log1p(mu / theta), in the form that does not cancel
            at_zero = mu / theta_plus_mu - log1p_ratio
            if per_feature:
                grad_theta = grad_out @ at_zero
                grad_theta.index_add_(0, col, nonzero)
            else:
                grad_theta = at_zero * grad_out.unsqueeze(1)
                grad_theta.reshape(-1).index_add_(0, flat, nonzero)
            grad_log_theta = grad_theta * theta
        return grad_log_mu, grad_log_theta, None, None, None


def negative_binomial_rows(
    log_mu: torch.Tensor,
    log_theta: torch.Tensor,
    row: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
) -> torch.Tensor:
    """``sum_g [log NB(x_ng; mu_ng, theta_g) + lgamma(x_ng + 1)]`` per cell (without ``lgamma(x+1)``).

    Parameters
    ----------
    log_mu
        Log means, shape ``(n_rows, n_features)``.
    log_theta
        Log inverse dispersions, shape ``(n_features,)`` or ``(n_rows, n_features)``.
    row, col, values
        Nonzero counts as coordinates, shape ``(nnz,)`` each.

    Returns
    -------
    Tensor of shape ``(n_rows,)``, float64 (see the module docstring); differentiable in ``log_mu`` and
    ``log_theta``.
    """
    return _NegativeBinomialRows.apply(log_mu, log_theta.expand(log_theta.shape), row, col, values)


LOG2_E = 1.4426950408889634


class _SoftmaxNegativeBinomialRows(torch.autograd.Function):
    """The NB per-cell log-likelihood with the softmax of the decoder folded in.

    ``mu = library × softmax(logits)``. The dense work is one pass each of ``exp2`` and ``log1p`` (the
    fastest of their families on CPU) plus cheap arithmetic: ``log p(0) = -theta log1p(mu / theta)``,
    and ``log mu`` is needed only at the nonzero entries, where it is ``logits - max - log(sum)``.
    """

    @staticmethod
    def forward(ctx, logits, log_library, log_theta, row, col, values):
        n_features = logits.shape[1]
        per_feature = log_theta.dim() == 1
        row_max = logits.amax(1, keepdim=True)
        mu = torch.exp2((logits - row_max).mul_(LOG2_E))  # exp(logits - max)
        row_sum = mu.sum(1)
        mu.mul_((log_library - row_sum.log()).exp().unsqueeze(1))  # library × softmax(logits)
        theta = log_theta.exp()
        log1p_ratio = torch.log1p(mu * torch.exp(-log_theta))  # log((theta + mu) / theta)
        flat = row * n_features + col
        log1p_nz = log1p_ratio.reshape(-1)[flat]
        log1p_ratio.view(-1).index_fill_(0, flat, 0.0)  # the dense float32 sum: only zero counts
        at_zero = -(log1p_ratio @ theta) if per_feature else -(log1p_ratio * theta).sum(-1)
        log_theta_nz = log_theta[col] if per_feature else log_theta.reshape(-1)[flat]
        # log-softmax offset in float64 (of the float32 sum, so that the dense and nonzero terms see
        # the same means): times a count in the millions, float32 rounding of it would show
        log_norm = row_max.squeeze(1).double() + row_sum.double().log() - log_library.double()
        log_mu_nz = logits.reshape(-1)[flat].double() - log_norm[row]
        nonzero = negative_binomial_nonzero_log_prob(values, log_mu_nz, log_theta_nz)
        ctx.save_for_backward(log_theta, theta, mu, log1p_ratio, log1p_nz, log_library, row, col, values)
        return at_zero.double().index_add(0, row, nonzero)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        log_theta, theta, mu, log1p_ratio, log1p_nz, log_library, row, col, values = ctx.saved_tensors
        grad_out = grad_out.to(mu.dtype)
        n_features = mu.shape[1]
        per_feature = log_theta.dim() == 1
        flat = row * n_features + col
        # share = mu / (theta + mu); d/dlog(mu) = -theta × share + x (1 - share) at the nonzeros
        share = mu / (mu + theta)
        share_nz = share.reshape(-1)[flat]
        theta_nz = theta[col] if per_feature else theta.reshape(-1)[flat]
        grad_out_nz = grad_out[row]
        grad_logits = grad_log_library = grad_log_theta = None
        if ctx.needs_input_grad[2]:
            # d/dtheta at every entry: share - log1p(mu / theta); at nonzeros digamma terms
            digamma_terms = torch.digamma(values + theta_nz) - torch.digamma(theta_nz)
            # (log1p_ratio holds zeros at the nonzeros: their share of -log1p(mu / theta) is added here)
            nonzero = grad_out_nz * (digamma_terms - values * (1 - share_nz) / theta_nz - log1p_nz)
            if per_feature:
                grad_theta = grad_out @ share - grad_out @ log1p_ratio
                grad_theta.index_add_(0, col, nonzero)
            else:
                grad_theta = (share - log1p_ratio).mul_(grad_out.unsqueeze(1))
                grad_theta.reshape(-1).index_add_(0, flat, nonzero)
            grad_log_theta = grad_theta * theta
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_log_mu = share.mul_(-theta)  # in place: share is not needed any more
            grad_log_mu.reshape(-1).index_add_(0, flat, values * (1 - share_nz))
            total = grad_log_mu.sum(1)  # d/dlog(library) per cell
            # softmax: d/dlogits_k = a_k - softmax_k × sum_j a_j, softmax = mu / library
            grad_log_mu.addcmul_(mu, (-total * torch.exp(-log_library)).unsqueeze(1))
            grad_logits = grad_log_mu.mul_(grad_out.unsqueeze(1))
            grad_log_library = total * grad_out
        return grad_logits, grad_log_library, grad_log_theta, None, None, None


def softmax_negative_binomial_rows(
    logits: torch.Tensor,
    log_library: torch.Tensor,
    log_theta: torch.Tensor,
    row: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
) -> torch.Tensor:
    """:func:`negative_binomial_rows` for ``mu = exp(log_library) × softmax(logits)``, fused.

    Parameters
    ----------
    logits
        Decoder outputs, shape ``(n_rows, n_features)``.
    log_library
        Log library size per row, shape ``(n_rows,)``.
    log_theta
        Log inverse dispersions, shape ``(n_features,)`` or ``(n_rows, n_features)``.
    row, col, values
        Nonzero counts as coordinates, shape ``(nnz,)`` each.

    Returns
    -------
    Tensor of shape ``(n_rows,)``, float64 (without ``lgamma(x+1)``); differentiable in ``logits``,
    ``log_library`` and ``log_theta``.
    """
    return _SoftmaxNegativeBinomialRows.apply(logits, log_library, log_theta, row, col, values)
