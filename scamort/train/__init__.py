"""Training: options, the loop."""

from scamort.train.config import TrainConfig, default_kl_warmup_epochs, default_max_epochs, resolve_device
from scamort.train.loop import NonFiniteLossError, TrainingResult, fit, split_cells

__all__ = [
    "NonFiniteLossError",
    "TrainConfig",
    "TrainingResult",
    "default_kl_warmup_epochs",
    "default_max_epochs",
    "fit",
    "resolve_device",
    "split_cells",
]
