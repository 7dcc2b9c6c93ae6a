"""Prompts, label captions and whole-word fitting to CLIP's context length."""
import pytest
from open_clip.tokenizer import SimpleTokenizer as ReferenceTokenizer

import clip
from tailclip.data import fit_to_context, label_caption, label_prompts, read_captions, read_split

NAMES = ["aeroplane", "dog", "person", "traffic light"]


def test_label_prompts_and_caption():
    assert label_prompts("a photo of a ", NAMES) == [
        "a photo of a aeroplane", "a photo of a dog", "a photo of a person", "a photo of a traffic light"]
    assert label_caption("a photo of a ", NAMES, (2, 1)) == "a photo of a person, dog"  # file order
    assert label_caption("a photo of a ", NAMES, (3,)) == "a photo of a traffic light"
    assert label_caption("a photo of a ", NAMES, ()) == "a photo of a "


def test_fit_small_context_by_hand():
    tokenizer = clip.get_tokenizer()
    # a / photo / of / a / person / , / dog / and / cat: one BPE token each.
    text = "a photo of a person, dog and cat"
    assert len(tokenizer.encode(text)) == 9
    assert fit_to_context(text, tokenizer, 11) == text
    assert fit_to_context(text, tokenizer, 10) == "a photo of a person, dog and"
    assert fit_to_context(text, tokenizer, 8) == "a photo of a person,"  # "person," is 2 tokens
    assert fit_to_context("  spaced   out  ", tokenizer, 77) == "spaced out"
    with pytest.raises(ValueError, match="first word"):
        fit_to_context(text, tokenizer, 2)


def _assert_longest_word_prefix(text, fitted, reference, context_length):
    """Whole words, a prefix, fits; one more word would not (counted by open_clip's tokenizer)."""
    words, kept = text.split(), fitted.split()
    assert kept == words[:len(kept)]
    clip.tokenize(fitted, context_length=context_length, truncate=False)  # raises if too long
    assert len(reference.encode(fitted)) + 2 <= context_length
    if len(kept) < len(words):
        longer = " ".join(words[:len(kept) + 1])
        assert len(reference.encode(longer)) + 2 > context_length


def test_every_coco_mlt_caption_fits_77_tokens(shared_data):
    folder = shared_data / "coco_mlt"
    entries = read_split(folder / "coco_lt_train.txt", 80)
    captions = read_captions(folder / "coco_lt_captions.txt", [entry.path for entry in entries])
    tokenizer, reference = clip.get_tokenizer(), ReferenceTokenizer()
    num_cut = 0
    for text in captions.values():
        fitted = fit_to_context(text, tokenizer, 77)
        _assert_longest_word_prefix(text, fitted, reference, 77)
        num_cut += fitted != " ".join(text.split())
    assert num_cut == 52  # measured: 52 of the 1,909 five-sentence captions exceed 75 tokens
