"""OpenAI CLIP's byte-level BPE tokenizer.

Text is cleaned (ftfy, HTML entities, whitespace, lower case), split by OpenAI's regex, each
piece mapped byte-wise to printable characters and merged by the ranked BPE merges of
`bpe_simple_vocab_16e6.txt.gz`, which ships in this package.
"""
import functools
import gzip
import html
import os
from pathlib import Path

import ftfy
import regex
import torch

from .errors import ClipError, ClipFileNotFoundError

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
SHIPPED_BPE = Path(__file__).with_name(BPE_FILENAME)  # OpenAI's file, byte for byte

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"

# The number of merges CLIP uses: vocabulary 49408 = 256 bytes * 2 (with and without the
# end-of-word mark) + 48894 merges + 2 special tokens.
_NUM_MERGES = 49408 - 2 * 256 - 2

_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)


def bpe_path() -> Path:
    """The vocabulary file: `$TAILCLIP_BPE_PATH` when set, else the copy shipped inside this
    package (as OpenAI's package ships it), so that tokenizing never needs a download."""
    from_env = os.environ.get("TAILCLIP_BPE_PATH")
    if from_env:
        if not Path(from_env).is_file():
            raise ClipFileNotFoundError(f"TAILCLIP_BPE_PATH={from_env} is not a file")
        return Path(from_env)
    return SHIPPED_BPE


@functools.lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """A reversible map from every byte to a printable unicode character (no whitespace or
    control characters), so that BPE can work on strings."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {byte: chr(byte) for byte in printable}
    substitutes = iter(range(256, 512))
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(next(substitutes))
    return mapping


def clean_text(text: str) -> str:
    """OpenAI's cleaning: ftfy, HTML entities (twice, for double escapes), collapse
    whitespace, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class SimpleTokenizer:
    """Byte-level BPE with CLIP's vocabulary; `encode` returns ids without SOT/EOT."""

    def __init__(self, bpe_file: str | os.PathLike | None = None):
        bpe_file = Path(bpe_file) if bpe_file is not None else bpe_path()
        with gzip.open(bpe_file, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]  # line 0 is a header
        if len(merges) != _NUM_MERGES or any(len(merge) != 2 for merge in merges):
            raise ValueError(f"{bpe_file} is not CLIP's BPE vocabulary ({BPE_FILENAME})")

        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {char: byte for byte, char in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
        self.encoder = {token: index for index, token in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.bpe_ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.cache = {SOT_TOKEN: SOT_TOKEN, EOT_TOKEN: EOT_TOKEN}
        self.sot_token = self.encoder[SOT_TOKEN]
        self.eot_token = self.encoder[EOT_TOKEN]

    def bpe(self, token: str) -> str:
        """Space-separated BPE symbols of one pre-tokenized piece (the last ends in `</w>`)."""
        if token in self.cache:
            return self.cache[token]
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self.cache[token] = " ".join(word)
        return self.cache[token]

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in regex.findall(_PATTERN, clean_text(text)):
            piece = "".join(self.byte_encoder[byte] for byte in piece.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(piece).split(" "))
        return ids

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        data = bytearray(self.byte_decoder[char] for char in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")


@functools.cache
def get_tokenizer() -> SimpleTokenizer:
    """The shared tokenizer (the vocabulary is read once per process)."""
    return SimpleTokenizer()


class TextTooLongError(ClipError, ValueError):
    """A text (a class prompt, a caption) that does not fit in the text tower's context."""


def tokenize(texts: str | list[str], context_length: int = 77, truncate: bool = False) -> torch.LongTensor:
    """Token ids [N, context_length]: SOT, the text's BPE ids, EOT, zero padding.

    A text longer than the context raises `TextTooLongError` naming it, unless `truncate` is set:
    then it is cut to `context_length` tokens and the last one is replaced by EOT."""
    if isinstance(texts, str):
        texts = [texts]
    tokenizer = get_tokenizer()
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tokenizer.sot_token, *tokenizer.encode(text), tokenizer.eot_token]
        if len(ids) > context_length:
            if not truncate:
                raise TextTooLongError(f"text is {len(ids)} tokens long, more than the context length "
                                       f"{context_length} (pass truncate=True to cut it): {text!r}")
            ids = ids[:context_length - 1] + [tokenizer.eot_token]
        result[row, :len(ids)] = torch.tensor(ids)
    return result


def trim_padding(tokens: torch.Tensor) -> torch.Tensor:
    """Token ids [N, L] cut after the batch's last end-of-text token: [N, L'] with L' <= L.

    The text tower gives the same embeddings for both (under its causal mask no pooled
    position sees the padding after it), and short prompts cost a fraction of the whole
    context. Call it where the ids are made, on the CPU: on a GPU the length it reads would
    make the host wait for the device.
    """
    if tokens.shape[0] == 0:
        return tokens
    # The end-of-text token has the largest id: argmax finds it, as the text tower's pooling.
    return tokens[:, :int(tokens.argmax(dim=-1).max()) + 1]
