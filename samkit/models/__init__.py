"""Model adapters: one seam (embed -> prompt_tokens -> decode) over several SAM implementations."""

from samkit.models.base import ImageEmbedding, SamAdapter
from samkit.models.registry import KNOWN_MODELS, load_model

__all__ = ["ImageEmbedding", "SamAdapter", "KNOWN_MODELS", "load_model"]
