"""Neural building blocks: MLPs, encoders, decoders and the product of experts."""

from scamort.nn.decoder import DISPERSIONS, CountDecoder
from scamort.nn.encoder import GaussianEncoder
from scamort.nn.mlp import CovariateMLP
from scamort.nn.product_of_experts import product_of_experts

__all__ = ["DISPERSIONS", "CountDecoder", "CovariateMLP", "GaussianEncoder", "product_of_experts"]
