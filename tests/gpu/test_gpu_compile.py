"""``compile = True`` (inductor) against eager, and the number of graphs compiled as the
caption length changes between batches (``batches.COMPILED_CAPTION_LENGTHS``); and the fast
mode's TF32 flags under inductor."""
import copy
import time

import torch
from torch._dynamo.utils import counters

from gpu_models import CUDA, batch, build_model, model_config
from tailclip.engine import setup, training, training_state
from tailclip.engine.batches import COMPILED_CAPTION_LENGTHS, caption_length
from tailclip.engine.optim import build_optimizer, build_scheduler
from tailclip.engine.precision import grad_scaler, set_tf32

# Captions of at most 9 to 21 tokens: four batches cut at 16, the last at 32.
LONGEST_CAPTIONS = (9, 12, 15, 16, 21)


def trainer(model, forward, objective):
    cfg = model_config("ViT-B/16")
    optimizer = build_optimizer(cfg, model.parameters(), CUDA)
    return training.Trainer(model, forward, objective, optimizer, build_scheduler(cfg, optimizer),
                            grad_scaler("fp32", CUDA), "fp32", CUDA, max_nonfinite_steps=0)


def test_compiled_training_equals_eager_with_one_graph_per_caption_length(exact_fp32, record_property):
    eager_model, objective = build_model("ViT-B/16")
    compiled_model = copy.deepcopy(eager_model)
    eager = trainer(eager_model, eager_model, objective)
    # The model alone compiled: the graphs counted are its forward's.
    compiled = trainer(compiled_model, setup.compile_forward(compiled_model), objective)
    torch._dynamo.reset()
    counters.clear()
    states, losses, lengths = [training_state.TrainState(), training_state.TrainState()], [], []
    started = time.perf_counter()
    for step, longest in enumerate(LONGEST_CAPTIONS):
        images, targets, ids = batch(seed=step, longest_caption=longest)
        ids = torch.nn.functional.pad(ids, (0, 77 - ids.shape[1]))
        ids = ids[:, :caption_length(ids.cpu(), COMPILED_CAPTION_LENGTHS)]
        lengths.append(ids.shape[1])
        for state, steps in zip(states, (eager, compiled)):
            training.train_step(steps, images, targets, ids, state, epoch=0)
        losses.append((states[0].last_loss, states[1].last_loss))
    graphs = counters["stats"]["unique_graphs"]
    record_property("caption_lengths", lengths)
    record_property("losses_eager_compiled", losses)
    record_property("graphs_compiled", graphs)
    record_property("seconds_with_compilation", round(time.perf_counter() - started, 1))
    assert lengths == [16, 16, 16, 16, 32]
    for eager_loss, compiled_loss in losses:
        assert abs(compiled_loss - eager_loss) <= 1e-4 * max(1.0, abs(eager_loss))
    assert graphs == 2  # one per caption length; a recompilation only when the length changes


def test_inductor_compiles_under_the_fast_modes_tf32_flags(record_property):
    """``tf32 = True`` sets torch's per-operator flags, and the matmul's older one with them:
    some torch releases' inductor still read it, which raises when only the newer was written."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.allow_tf32, matmul.fp32_precision, conv.fp32_precision
    try:
        set_tf32(True, CUDA)
        layer = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 8)).to(CUDA)
        inputs = torch.randn(64, 256, device=CUDA)
        compiled = setup.compile_forward(layer)
        difference = (compiled(inputs) - layer(inputs)).abs().max().item()
    finally:
        matmul.allow_tf32, matmul.fp32_precision, conv.fp32_precision = saved
    record_property("max_difference_tf32", difference)
    assert difference <= 1e-2
