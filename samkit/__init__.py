"""samkit: a Jupyter-first kit for learning how prompts steer the Segment Anything Model."""

from samkit.models import KNOWN_MODELS, ImageEmbedding, SamAdapter, load_model
from samkit.predictor import Predictor
from samkit.setup import setup

__version__ = "0.1.0"
__all__ = ["KNOWN_MODELS", "ImageEmbedding", "Predictor", "SamAdapter", "load_model", "setup", "__version__"]
