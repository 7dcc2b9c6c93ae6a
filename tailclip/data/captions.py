"""Class prompts and per-image captions for the contrastive loss."""
from clip.tokenizer import TextTooLongError


def label_prompts(class_caption: str, class_names) -> list[str]:
    """One prompt per class: ``class_caption + name`` ("a photo of a " + "aeroplane")."""
    return [class_caption + name for name in class_names]


def label_caption(class_caption: str, class_names, labels) -> str:
    """An image's caption from its labels in split-file order: "a photo of a person, dog"."""
    return class_caption + ", ".join(class_names[label] for label in labels)


def fit_to_context(text: str, tokenizer, context_length: int) -> str:
    """The longest prefix of whole words of ``text`` whose tokens, with the start and end tokens,
    fit in ``context_length`` (the paper cuts long captions at a word, not at a token).

    ``tokenizer.encode(text) -> list[int]`` (CLIP's BPE). Words are whitespace-separated and
    the result joins them with single spaces. A first word that alone does not fit is an error.
    """
    words = text.split()

    def fits(count: int) -> bool:
        return len(tokenizer.encode(" ".join(words[:count]))) + 2 <= context_length

    if fits(len(words)):
        return " ".join(words)
    # Token counts grow with the number of words (BPE tokens never span whitespace), so the
    # longest fitting prefix is found by bisection: fits(low) holds, fits(high) does not.
    low, high = 0, len(words)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    if low == 0:
        raise TextTooLongError(f"the first word of {text[:80]!r} alone does not fit in {context_length} tokens")
    return " ".join(words[:low])
