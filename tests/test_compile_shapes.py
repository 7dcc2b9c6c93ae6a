"""``compile = True``: the training caption ids come in a few fixed lengths, so torch.compile
traces one graph per fixed length instead of one per caption length."""
import dataclasses
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import clip
from tailclip.config import load_config
from tailclip.data import build_data
from tailclip.engine import setup
from tailclip.engine.batches import COMPILED_CAPTION_LENGTHS, build_split_batches, caption_length

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
SOT, EOT, WORD = 49406, 49407, 320


def caption_ids(count: int, longest: int) -> torch.Tensor:
    """Ids [count, 77] of captions of 3 to ``longest`` tokens (start and end included)."""
    ids = torch.zeros(count, 77, dtype=torch.long)
    for row, length in enumerate(torch.linspace(3, longest, count).round().long().tolist()):
        ids[row, 0], ids[row, 1:length - 1], ids[row, length - 1] = SOT, WORD, EOT
    return ids


def test_caption_length_is_the_first_fixed_length_that_holds_the_batch():
    assert caption_length(caption_ids(4, 9)) == 9
    assert caption_length(caption_ids(4, 9), (16, 32, 77)) == 16
    assert caption_length(caption_ids(4, 16), (16, 32, 77)) == 16
    assert caption_length(caption_ids(4, 17), (16, 32, 77)) == 32
    assert caption_length(caption_ids(4, 77), (16, 32, 77)) == 77
    assert caption_length(caption_ids(4, 30)[:, :40], (16, 32, 77)) == 32
    assert caption_length(caption_ids(4, 35)[:, :40], (16, 32, 77)) == 40  # the context is 40


def test_cut_at_a_fixed_length_the_text_tower_gives_the_same_embeddings():
    torch.manual_seed(0)
    model = clip.create_model("ViT-tiny").eval()
    ids = caption_ids(5, 11)
    with torch.no_grad():
        own, fixed = (model.encode_text(ids[:, :caption_length(ids, lengths)]) for lengths in ((), (16,)))
    torch.testing.assert_close(fixed, own, rtol=1e-5, atol=1e-6)


def graphs_traced(caption_lengths: tuple[int, ...]) -> int:
    """Graphs torch.compile traces for the text tower on 4 batches of captions of 7 to 30
    tokens, compiled as `compile = True` compiles the training forward pass (the "eager"
    backend: dynamo's tracing and guards, which decide recompilation, without a compiler)."""
    torch.manual_seed(0)
    text_tower = setup.compile_forward(clip.create_model("ViT-tiny").encode_text, backend="eager")
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        for longest in (7, 12, 18, 30):
            ids = caption_ids(4, longest)
            text_tower(ids[:, :caption_length(ids, caption_lengths)])
    return counters["stats"]["unique_graphs"]


def test_compiled_training_traces_one_graph_per_fixed_caption_length():
    assert graphs_traced(COMPILED_CAPTION_LENGTHS) == 2  # 16 and 32
    assert graphs_traced(()) == 4  # the batch's own length: one graph per length


@pytest.mark.parametrize("compiled", [False, True])
def test_training_batches_cut_captions_at_fixed_lengths_when_compiled(compiled):
    cfg = dataclasses.replace(load_config(REPO / "configs" / "demo.py"), compile=compiled)
    data = build_data(cfg)
    train, test = (build_split_batches(cfg, data, train, CPU) for train in (True, False))
    lengths = {batch[2].shape[1] for batch, _ in zip(train.batches(CPU), range(5))}
    longest = {clip.trim_padding(batch[2]).shape[1] for batch, _ in zip(train.batches(CPU), range(5))}
    assert lengths <= set(COMPILED_CAPTION_LENGTHS) if compiled else lengths == longest
    assert test.caption_lengths == ()  # evaluation is not compiled
