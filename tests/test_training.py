"""The training loop's parts: backbone checks, optimiser and schedule, batched evaluation,
mixed precision, non-finite losses, Ctrl-C handling, rebuilding a model from a checkpoint."""
import copy
import dataclasses
import math
import os
import runpy
import signal
from pathlib import Path

import pytest
import torch

import clip
from tailclip import factory
from tailclip.config import Config, load_config
from tailclip.data import build_data
from tailclip.engine import evaluation, saved_model, stop_signals, training, training_state
from tailclip.engine.batches import build_split_batches
from tailclip.engine.cache import to_model_input
from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.logger import read_metrics
from tailclip.engine.meter import EpochMeter
from tailclip.engine.optim import build_optimizer, build_scheduler
from tailclip.engine.precision import autocast, resolve_precision
from tailclip.engine.run_lock import LOCK_FILE
from tailclip.losses import TailCLIPObjective
from tailclip.metrics import scores_from_logits
from tailclip.model import TailCLIP
from tiny_dataset import write_config, write_dataset

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "car", "tree", "boat"]
PROMPTS = ["a photo of a " + name for name in CLASSES]
CPU = torch.device("cpu")
TINY = Config(model_name="ViT-tiny", pretrained=False, size=64, device="cpu")


def tiny_batch(count: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, 64, 64, generator=generator)
    targets = (torch.rand(count, len(CLASSES), generator=generator) > 0.6).float()
    targets[:, 0] = 1  # every image has a label
    # Repeated captions, as label captions of a test split repeat.
    tokens = clip.tokenize([f"a photo of a {CLASSES[i % 2]}" for i in range(count)])
    return images, targets, tokens


@pytest.fixture(scope="module")
def tiny_model() -> TailCLIP:
    torch.manual_seed(0)
    return factory.build_model(TINY, PROMPTS)


@pytest.fixture(scope="module")
def tiny_objective(tiny_model) -> TailCLIPObjective:
    return factory.build_objective(TINY, tiny_model, class_weights=torch.linspace(0.2, 1, len(CLASSES)))


def test_backbone_resolution_and_context_are_checked():
    with pytest.raises(ValueError, match=r"ViT-tiny takes 64-pixel images, not 32.*interpolate_pos_embedding"):
        factory.build_clip(dataclasses.replace(TINY, size=32))
    model = factory.build_clip(dataclasses.replace(TINY, size=32, interpolate_pos_embedding=True))
    assert model.visual.input_resolution == 32
    assert model.visual.positional_embedding.shape[0] == (32 // 16) ** 2 + 1
    with pytest.raises(ValueError, match="ResNet"):
        factory.build_clip(dataclasses.replace(TINY, model_name="RN-tiny", size=32,
                                              interpolate_pos_embedding=True))
    with pytest.raises(ValueError, match="max_length = 40 but ViT-tiny's text tower takes 77"):
        factory.build_clip(dataclasses.replace(TINY, max_length=40))
    with pytest.raises(ValueError, match="no pretrained OpenAI weights.*pretrained = False"):
        factory.build_clip(dataclasses.replace(TINY, pretrained=True))


def test_optimizers_and_cosine_schedule():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    cfg = dataclasses.replace(TINY, lr=1e-3, weight_decay=0.05, epochs=4)
    adamw = build_optimizer(cfg, params, CPU)
    assert isinstance(adamw, torch.optim.AdamW) and len(adamw.param_groups) == 1
    group = adamw.param_groups[0]  # every parameter decays, as in the paper
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.98), 1e-9, 0.05)
    assert len(group["params"]) == 2
    assert isinstance(build_optimizer(dataclasses.replace(cfg, optimizer="Adam"), params, CPU), torch.optim.Adam)
    sgd = build_optimizer(dataclasses.replace(cfg, optimizer="SGD", momentum=0.8), params, CPU)
    assert sgd.param_groups[0]["momentum"] == 0.8

    scheduler = build_scheduler(cfg, adamw)
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(adamw.param_groups[0]["lr"])
        adamw.step()
        scheduler.step()
    expected = [1e-3 * (1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert adamw.param_groups[0]["lr"] == pytest.approx(0, abs=1e-18)


def test_precision_choices():
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        resolve_precision("fp16", CPU)


def test_bf16_loss_agrees_with_fp32(tiny_model, tiny_objective):
    images, targets, tokens = tiny_batch(6)
    with torch.no_grad():
        full = tiny_objective(**tiny_model(images, tokens), targets=targets)
        with autocast("bf16", CPU):
            mixed = tiny_objective(**tiny_model(images, tokens), targets=targets)
    # bf16 keeps 8 bits of mantissa: through the backbone the class logits move by ~0.03 (the
    # head itself is float32), which BAL's max-normalised, gamma_neg = 4 focusing turns into
    # ~1% (measured on batches of seeds 0-2: at most 0.3%, 0.09% and 1.3% for the terms below).
    tolerance = {"loss": 1e-2, "loss_clip": 2e-3, "loss_bal": 3e-2}
    for name, rel in tolerance.items():
        assert mixed[name].dtype == torch.float32  # losses are computed in float32
        assert mixed[name].item() == pytest.approx(full[name].item(), rel=rel), name


def test_batched_evaluation_matches_per_image_scoring(tiny_model, tiny_objective):
    images, targets, tokens = tiny_batch(10)
    index = torch.arange(10)
    batches = [(images[i:i + 4], targets[i:i + 4], tokens[i:i + 4], index[i:i + 4]) for i in range(0, 10, 4)]
    result = evaluation.evaluate_model(tiny_model, tiny_objective, batches, tokens, CPU, "fp32", keep_embeddings=True)

    with torch.no_grad():
        one_by_one = torch.cat([scores_from_logits(tiny_model.predict_logits(images[i:i + 1]), tiny_model.score_kind)
                                for i in range(10)])
        # The loss as the training forward computes it, batch by batch, weighted by batch size.
        loss = sum(tiny_objective(**tiny_model(batch[0], batch[2]), targets=batch[1])["loss"] * len(batch[0])
                   for batch in batches) / 10
        embeddings = tiny_model.encode_images(images)
    assert torch.allclose(result.scores, one_by_one, atol=1e-6)
    assert torch.allclose(result.scores.sum(1), torch.ones(10))  # softmax scores
    assert result.loss == pytest.approx(loss.item(), rel=1e-5)
    assert torch.allclose(result.image_emb, embeddings, atol=1e-6)
    assert torch.equal(result.targets, targets)
    assert result.metrics["mAP"] == pytest.approx(
        sum(ap for ap in result.metrics["AP"] if not math.isnan(ap))
        / sum(1 for ap in result.metrics["AP"] if not math.isnan(ap)))


def test_epoch_meter_averages_per_image():
    meter = EpochMeter()
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    meter.update({"loss": torch.tensor(1.0), "loss_bal": torch.tensor(0.5), "logits": logits[:2]},
                 targets[:2], "softmax")
    meter.update({"loss": torch.tensor(4.0), "loss_bal": torch.tensor(2.0), "logits": logits[2:]},
                 targets[2:], "softmax")
    summary = meter.summary({"head": [0], "tail": [1]})
    assert summary["train/loss"] == pytest.approx((1.0 * 2 + 4.0) / 3)
    assert summary["train/loss_bal"] == pytest.approx((0.5 * 2 + 2.0) / 3)
    # class 0 ranks its two positives first (AP 1); class 1's positives score 0.88 and 0.27
    # against the negative's 0.12: also ranked first (AP 1)
    assert summary["train/mAP"] == pytest.approx(1.0)

    restored = EpochMeter()
    restored.load_state_dict(meter.state_dict(), CPU)
    assert restored.summary({"head": [0], "tail": [1]}) == summary


def test_cached_training_batches_do_not_depend_on_where_an_epoch_starts():
    cfg = dataclasses.replace(load_config(REPO / "configs" / "demo.py"), batch_size=128)
    batches = build_split_batches(cfg, build_data(cfg), train=True, device=CPU)
    assert batches.cached and batches.steps_per_epoch() == math.ceil(1142 / 128)
    whole = list(batches.batches(CPU, epoch=1))
    resumed = list(batches.batches(CPU, epoch=1, start_step=6))  # as after a stop at step 6
    assert len(whole) == 9 and len(resumed) == 3
    for expected, batch in zip(whole[6:], resumed):
        for a, b in zip(expected, batch):
            assert torch.equal(a, b)
    assert not torch.equal(next(batches.batches(CPU, epoch=2))[3], whole[0][3])  # another draw

    images, _, _, index = whole[0]
    plain = to_model_input(batches.loader.dataset.images[index], batches.mean, batches.std)
    mirrored = torch.tensor([torch.equal(image, p.flip(-1)) for image, p in zip(images, plain)])
    unchanged = torch.tensor([torch.equal(image, p) for image, p in zip(images, plain)])
    assert torch.all(mirrored | unchanged) and 0.3 < mirrored.float().mean() < 0.7  # random flips


def _trainer(model, objective, max_nonfinite_steps, forward=None):
    optimizer = build_optimizer(TINY, model.parameters(), CPU)
    return training.Trainer(model, model if forward is None else forward, objective, optimizer,
                            build_scheduler(TINY, optimizer), torch.amp.GradScaler("cpu", enabled=False), "fp32",
                            CPU, max_nonfinite_steps)


def test_compiled_training_step_has_no_graph_break_and_matches_eager(tiny_model, tiny_objective):
    # `compile = True`: the forward pass must trace as one graph (fullgraph raises at a graph
    # break) also as the batch size and caption length change. The "aot_eager" backend traces
    # forward and backward as inductor does without its minute of C++ compilation per shape.
    eager = copy.deepcopy(tiny_model)
    compiled = copy.deepcopy(tiny_model)
    trainers = [_trainer(eager, tiny_objective, 0),
                _trainer(compiled, tiny_objective, 0, torch.compile(compiled, backend="aot_eager", fullgraph=True))]
    states = [training_state.TrainState(), training_state.TrainState()]
    for count, seed in [(6, 1), (7, 2), (5, 3)]:
        images, targets, tokens = tiny_batch(count, seed)
        tokens = clip.trim_padding(tokens) if seed != 3 else tokens  # the last: the whole context
        for trainer, state in zip(trainers, states):
            training.train_step(trainer, images, targets, tokens, state, epoch=0)
        assert states[1].last_loss == pytest.approx(states[0].last_loss, rel=1e-5)
    for (name, value), other in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(other, value, rtol=1e-4, atol=1e-6, msg=name)


def test_nonfinite_loss_skips_then_stops(tiny_model, tiny_objective, monkeypatch):
    images, targets, tokens = tiny_batch(4)
    before = {name: value.clone() for name, value in tiny_model.state_dict().items()}
    trainer = _trainer(tiny_model, tiny_objective, max_nonfinite_steps=1)
    forward = TailCLIPObjective.forward
    def nan_loss(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        return {**out, "loss": out["loss"] * float("nan")}  # NaN gradients too

    monkeypatch.setattr(TailCLIPObjective, "forward", nan_loss)
    state = training_state.TrainState(epoch=2, step_in_epoch=4, global_step=11)
    assert training.train_step(trainer, images, targets, tokens, state, epoch=2) is None
    assert state.nonfinite_steps == 1
    for name, value in tiny_model.state_dict().items():  # a skipped step changes nothing
        assert torch.equal(value, before[name]), name
    assert all(parameter.grad is None for parameter in tiny_model.parameters())
    assert not trainer.optimizer.state  # nor the optimiser's moments
    with pytest.raises(training.NonFiniteLossError,
                       match=r"non-finite loss \(nan\) at epoch 3, step 5 \(global step 12\).*"
                             r"max_nonfinite_steps = 1"):
        training.train_step(trainer, images, targets, tokens, state, epoch=2)


def test_nan_during_training_stops_without_touching_checkpoints(tmp_path, monkeypatch, capsys):
    train_main = runpy.run_path(str(REPO / "train.py"))["main"]
    forward = TailCLIPObjective.forward
    calls = []
    steps_per_epoch = math.ceil(1142 / 128)

    def forward_nan_in_epoch_2(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if not torch.is_grad_enabled():  # an evaluation's
            return out
        calls.append(None)
        if len(calls) == steps_per_epoch + 2:  # step 2 of epoch 2
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(TailCLIPObjective, "forward", forward_nan_in_epoch_2)
    # BAL alone: no caption encoding, half the time; the stop does not depend on the loss terms
    code = train_main(["--config=configs/demo.py", "--set", "epochs=2", "--set", "batch_size=128",
                       "--set", "loss_function=['bal']", "--set", f"run_dir={tmp_path}"])
    assert code == 1
    message = capsys.readouterr().err
    assert f"non-finite loss (nan) at epoch 2, step 2 (global step {steps_per_epoch + 2})" in message
    assert "no checkpoint was written" in message
    run_dir = tmp_path / "demo"
    assert [record["epoch"] for record in read_metrics(run_dir)] == [0, 1]
    for name in ("newest_train_checkpoint.pt", "best_valid_mAP.pt", "best_valid_mAP_tail.pt"):
        state = load_checkpoint(run_dir / name)["state"]
        assert (state["epoch"], state["nonfinite_steps"]) == (1, 0), name


def test_nonfinite_evaluation_stops_naming_the_epoch(tmp_path, monkeypatch, capsys):
    # The evaluation after epoch 2 (the third, after the one before training) scores NaN.
    encode_labels, evaluations = TailCLIP.encode_labels, []

    def nan_labels_in_third_evaluation(self):
        embeddings = encode_labels(self)
        if not self.training:  # once per evaluation
            evaluations.append(None)
            if len(evaluations) == 3:
                return embeddings * float("nan")
        return embeddings

    monkeypatch.setattr(TailCLIP, "encode_labels", nan_labels_in_third_evaluation)
    config = write_config(tmp_path / "tiny.py", write_dataset(tmp_path / "data"), tmp_path / "runs",
                          epochs=2, loss_function=["bal"])
    train_main = runpy.run_path(str(REPO / "train.py"))["main"]
    assert train_main([f"--config={config}"]) == 1
    message = capsys.readouterr().err
    assert "error: evaluation after epoch 2: non-finite scores (NaN or inf) for 8 of 8 images" in message
    assert "Traceback" not in message
    run_dir = tmp_path / "runs" / "tiny"
    assert [record["epoch"] for record in read_metrics(run_dir)] == [0, 1]  # epoch 0: before training
    for name in ("newest_train_checkpoint.pt", "best_valid_mAP.pt", "best_valid_mAP_tail.pt"):
        assert load_checkpoint(run_dir / name)["state"]["epoch"] == 1, name
    assert not (run_dir / LOCK_FILE).exists()  # released on the error


def test_second_ctrl_c_interrupts_at_once():
    previous = signal.getsignal(signal.SIGINT)
    with stop_signals.StopSignals() as stop:
        stop.defer()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal_number == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous


def test_model_rebuilt_from_checkpoint_alone(tiny_model):
    cfg = dataclasses.replace(TINY, size=32, interpolate_pos_embedding=True)
    torch.manual_seed(1)
    model = factory.build_model(cfg, PROMPTS)
    checkpoint = {"config": cfg.to_dict(), "label_prompts": PROMPTS, "model": model.state_dict()}
    torch.manual_seed(2)  # the rebuilt model starts from other random weights
    rebuilt, rebuilt_cfg = saved_model.model_from_checkpoint(checkpoint, "run/best.pt")
    assert rebuilt_cfg == cfg and not rebuilt.training
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.predict_logits(images), model.eval().predict_logits(images))

    checkpoint["model"] = tiny_model.state_dict()  # 64-pixel weights for a 32-pixel config
    with pytest.raises(ValueError, match="run/best.pt: the weights do not fit"):
        saved_model.model_from_checkpoint(checkpoint, "run/best.pt")



def test_num_threads_sets_torchs_cpu_threads_and_0_keeps_them():
    before = torch.get_num_threads()
    try:
        factory.set_cpu_threads(1)
        assert torch.get_num_threads() == 1
        factory.set_cpu_threads(0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
