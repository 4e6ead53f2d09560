"""The product of Gaussian experts, prior expert included."""

from __future__ import annotations

import torch

__all__ = ["product_of_experts"]

#: Log-variances are floored here before exponentiating: precisions up to e^30 stay finite in float32
#: even summed over many experts.
MIN_LOG_VARIANCE = -30.0


def product_of_experts(
    mean: torch.Tensor,
    log_variance: torch.Tensor,
    mask: torch.Tensor,
    dims: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine diagonal Gaussian experts with the standard-normal prior expert.

    ``precision = 1 + sum_m mask_m / var_m`` and ``mean = sum_m mask_m mean_m / var_m / precision``.
    Experts come as log-variances (floored at ``MIN_LOG_VARIANCE`` so no precision overflows) and the
    result's log-variance is ``-log(precision)``, so no variance is ever formed or divided by.

    Parameters
    ----------
    mean, log_variance
        Experts' means and log-variances, shape ``(n_experts, batch, n_latent)``.
    mask
        Which experts each cell has, shape ``(n_experts, batch)`` (bool or 0/1).
    dims
        Which latent dimensions each expert has an opinion on, ``(n_experts, n_latent)`` (bool or
        0/1); default all. An expert without an opinion on dimension ``d`` has precision 0 there
        (infinite variance): ``precision_d = 1 + sum_m mask_m dims_md / var_md``. This is how a
        dimension private to one modality gets that modality's expert and the prior only.

    Returns
    -------
    mean, log_variance
        The product's mean and log-variance, shape ``(batch, n_latent)``. A cell with no expert gets
        the prior, N(0, I).
    """
    weight = mask.unsqueeze(-1).to(mean.dtype)
    if dims is not None:
        weight = weight * dims.unsqueeze(1).to(mean.dtype)
    precision = torch.exp(-log_variance.clamp(min=MIN_LOG_VARIANCE)) * weight
    if mean.shape[0] == 1:  # one expert and the prior: the same formulas, fewer kernels
        precision = precision[0]
        return precision * mean[0] / (1 + precision), -torch.log1p(precision)
    total_precision = 1 + precision.sum(0)
    joint_mean = (precision * mean).sum(0) / total_precision
    return joint_mean, -torch.log(total_precision)
