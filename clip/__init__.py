"""Our CLIP backbone: OpenAI-checkpoint compatible models, tokenizer and preprocessing."""
from .factory import available_models, create_model, load, model_resolution
from .model import CLIP, build_model, interpolate_positional_embedding
from .tokenizer import get_tokenizer, tokenize, trim_padding

__all__ = [
    "CLIP",
    "available_models",
    "build_model",
    "create_model",
    "get_tokenizer",
    "interpolate_positional_embedding",
    "load",
    "model_resolution",
    "tokenize",
    "trim_padding",
]
