"""Our CLIP backbone: OpenAI-checkpoint compatible models, tokenizer and preprocessing."""
from .errors import ClipError, ClipFileNotFoundError
from .factory import available_models, create_model, load, load_model, model_resolution
from .model import CLIP, build_model, interpolate_positional_embedding
from .open_clip_compat import (
                               build_from_open_clip_config,
                               convert_open_clip_state_dict,
                               is_plain_clip,
                               unsupported_options,
)
from .tokenizer import get_tokenizer, tokenize, trim_padding

__all__ = [
    "CLIP",
    "ClipError",
    "ClipFileNotFoundError",
    "available_models",
    "build_from_open_clip_config",
    "build_model",
    "convert_open_clip_state_dict",
    "create_model",
    "get_tokenizer",
    "interpolate_positional_embedding",
    "is_plain_clip",
    "load",
    "load_model",
    "model_resolution",
    "tokenize",
    "trim_padding",
    "unsupported_options",
]
