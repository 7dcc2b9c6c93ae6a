"""The tokenizer against open_clip's (the independent reference), on the benchmarks' real text."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import open_clip  # the reference implementation (requirements-dev.txt)
import pytest
import torch

import clip
from clip import tokenizer as clip_tokenizer

SOT, EOT = 49406, 49407
REPO_ROOT = Path(__file__).resolve().parents[1]
OPENAI_BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"  # ../shared/data/README.md


def _captions(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split(maxsplit=1)[1] for line in lines if line.strip()]


def _class_names(path: Path) -> list[str]:
    # "<class name> <index>"; names may contain spaces, lines may end in spaces or CR.
    return [line.rsplit(maxsplit=1)[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("dataset", ["voc_mlt", "coco_mlt"])
def test_identical_to_open_clip_on_benchmark_text(shared_data, dataset):
    prefix = dataset.split("_")[0]
    captions = _captions(shared_data / dataset / f"{prefix}_lt_captions.txt")
    prompts = ["a photo of a " + name for name in _class_names(shared_data / dataset / f"{prefix}_labels.txt")]
    assert len(captions) > 1000 and len(prompts) in (20, 80)
    texts = captions + prompts
    ours = clip.tokenize(texts, truncate=True)
    reference = open_clip.tokenize(texts)  # open_clip always truncates, ending in EOT
    assert torch.equal(ours, reference)
    # COCO's five joined captions overflow the context: truncation is really exercised.
    assert dataset == "voc_mlt" or (ours[:, -1] == EOT).sum() > 50


@pytest.mark.parametrize("text", [
    "",
    "   ",
    "Café naïve façade — ÜBER straße",
    "日本語のテキスト and emoji 🐈‍⬛👍🏽",
    "Tom &amp; Jerry &lt;3 &amp;amp; &quot;friends&quot;",
    "mojibake: Ã©tÃ© â€” fixed by ftfy",
    "it's they're we've I'm you'll he'd CAN'T",
    "numbers 12345 and 3.14159, tabs\tand\nnewlines",
    "a photo of a traffic light",
])
def test_identical_to_open_clip_on_edge_cases(text):
    assert torch.equal(clip.tokenize(text), open_clip.tokenize(text))


def test_known_ids_and_empty_text():
    assert clip.tokenize("a photo of a cat")[0, :7].tolist() == [SOT, 320, 1125, 539, 320, 2368, EOT]
    empty = clip.tokenize("")
    assert empty.shape == (1, 77) and empty[0, :2].tolist() == [SOT, EOT] and not empty[0, 2:].any()


def test_trim_padding_cuts_after_the_batchs_last_end_of_text():
    tokens = clip.tokenize(["a photo of a cat", "x", ""])
    trimmed = clip.trim_padding(tokens)
    # The longest text: start, five word ids, end.
    assert trimmed.shape == (3, 7) and torch.equal(trimmed, tokens[:, :7])
    assert trimmed[0, -1] == EOT and not tokens[:, 7:].any()
    assert clip.trim_padding(clip.tokenize("cat " * 75)).shape == (1, 77)
    assert clip.trim_padding(tokens[:0]).shape == (0, 77)


def test_over_long_text_raises_naming_it_unless_truncated():
    text = "a very long caption " * 30
    with pytest.raises(ValueError, match="a very long caption"):
        clip.tokenize(["short", text])
    truncated = clip.tokenize(text, truncate=True)
    assert truncated[0, 0] == SOT and truncated[0, -1] == EOT
    assert torch.equal(truncated, open_clip.tokenize(text))


def test_exact_fit_is_not_an_error():
    tokenizer = clip.get_tokenizer()
    text = "cat " * 75  # 75 BPE ids + SOT + EOT = 77
    assert len(tokenizer.encode(text)) == 75
    assert clip.tokenize(text)[0, -1] == EOT


def test_other_context_lengths():
    tokens = clip.tokenize(["a photo of a cat", "x"], context_length=16)
    assert tokens.shape == (2, 16) and tokens.dtype == torch.long
    assert torch.equal(tokens, open_clip.tokenize(["a photo of a cat", "x"], context_length=16))


def test_decode_inverts_encode_up_to_cleaning():
    tokenizer = clip.get_tokenizer()
    assert tokenizer.decode(tokenizer.encode("A  Photo of a CAT!")) == "a photo of a cat ! "
    assert tokenizer.decode(tokenizer.encode("naïve 🐈")).split() == ["naïve", "🐈"]


def test_get_tokenizer_is_cached():
    assert clip.get_tokenizer() is clip.get_tokenizer()


def test_bpe_path_lookup_order(monkeypatch, tmp_path, shared_data):
    shared = str(shared_data / "clip" / "bpe_simple_vocab_16e6.txt.gz")
    monkeypatch.setenv("TAILCLIP_BPE_PATH", shared)
    assert clip_tokenizer.bpe_path() == Path(shared)

    monkeypatch.setenv("TAILCLIP_BPE_PATH", str(tmp_path / "missing.txt.gz"))
    with pytest.raises(FileNotFoundError, match="TAILCLIP_BPE_PATH"):
        clip_tokenizer.bpe_path()

    # Without the variable: the copy inside our package, whatever the cache holds.
    monkeypatch.delenv("TAILCLIP_BPE_PATH")
    monkeypatch.setenv("TAILCLIP_CACHE", str(tmp_path))
    assert clip_tokenizer.bpe_path() == REPO_ROOT / "clip" / clip_tokenizer.BPE_FILENAME
    assert clip_tokenizer.SimpleTokenizer(clip_tokenizer.bpe_path()).encode("a photo") == [320, 1125]


def test_shipped_vocabulary_is_openai_file(shared_data):
    shipped = (REPO_ROOT / "clip" / clip_tokenizer.BPE_FILENAME).read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == OPENAI_BPE_SHA256
    assert shipped == (shared_data / "clip" / clip_tokenizer.BPE_FILENAME).read_bytes()
    # Tracked by git, so that a fresh clone has it.
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "clip/" + clip_tokenizer.BPE_FILENAME],
                             cwd=REPO_ROOT, capture_output=True)
    assert tracked.returncode == 0, tracked.stderr


def test_wrong_vocabulary_file_is_refused(tmp_path):
    import gzip
    bad = tmp_path / "vocab.txt.gz"
    with gzip.open(bad, "wt") as f:
        f.write("header\na b\n")
    with pytest.raises(ValueError, match="not CLIP's BPE vocabulary"):
        clip_tokenizer.SimpleTokenizer(bad)


def test_tokenizer_needs_no_download_nor_open_clip(tmp_path):
    # The runtime requirements alone, an empty cache, no network: the vocabulary is at hand.
    script = """
import socket, sys
sys.modules["open_clip"] = None  # not installed
def no_network(*args, **kwargs):
    raise AssertionError("network used")
socket.socket.connect = no_network
import clip
print(clip.tokenize(["a photo of a cat"])[0, :4].tolist())
"""
    env = {key: value for key, value in os.environ.items() if key != "TAILCLIP_BPE_PATH"}
    env["TAILCLIP_CACHE"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "[49406, 320, 1125, 539]"
    assert not list(tmp_path.iterdir())
