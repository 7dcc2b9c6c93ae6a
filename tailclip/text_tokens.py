"""The tokenizer of a config's backbone: token ids for class prompts and captions, and whether
its padding may be trimmed.

Every tokenizer here has the same interface: ``tokenizer(texts)`` -> ids [N, context_length],
``encode(text)`` -> ids without the start and end tokens (to fit a caption at a word boundary,
``tailclip.data.captions.fit_to_context``), and ``trim_padding(ids)``: ``clip.trim_padding``
for OpenAI's text tower, nothing cut for a tower that reads the padding.
"""
import clip

from .open_clip_backbone import is_open_clip_name, is_standard_clip, open_clip_tokenizer


class ClipTokenizer:
    """OpenAI CLIP's BPE tokenizer (our ``clip`` package), padded to ``context_length``."""

    def __init__(self, context_length: int):
        self.context_length = context_length

    def __call__(self, texts: list[str]):
        return clip.tokenize(texts, context_length=self.context_length)

    def encode(self, text: str) -> list[int]:
        return clip.get_tokenizer().encode(text)

    trim_padding = staticmethod(clip.trim_padding)


def text_tokenizer(cfg):
    """The tokenizer of ``cfg.model_name``, padding to ``cfg.max_length``: CLIP's for OpenAI's
    models and open_clip's standard CLIPs, open_clip's own for the other open_clip families."""
    if is_open_clip_name(cfg.model_name) and not is_standard_clip(cfg.model_name):
        return open_clip_tokenizer(cfg.model_name, cfg.max_length)
    return ClipTokenizer(cfg.max_length)
