"""Mixed precision, fused AdamW, channels-last and SyncBatchNorm against their float32 /
plain references, on real-size random RN50 and ViT-B/16 weights; and the peak memory of a
ViT-B/16 training step. Each test records what it measured (``record_property``)."""
import copy

import pytest
import torch
import torch.nn as nn

from gpu_models import CUDA, batch, build_model, model_config, training_outputs
from tailclip.engine import training, training_state
from tailclip.engine.optim import build_optimizer
from tailclip.engine.precision import autocast, grad_scaler

# Largest |class logit difference| (the logit scale of random weights is 1 / 0.07 = 14.3: 0.15
# is a cosine off by 0.01), relative loss difference, and lowest cosine between the whole
# gradient vectors, of each autocast dtype against float32 (8 and 11 mantissa bits).
TOLERANCES = {"bf16": {"logits": 0.15, "loss": 1e-2, "gradient_cosine": 0.99},
              "fp16": {"logits": 0.03, "loss": 2e-3, "gradient_cosine": 0.999}}


def forward_backward(model, objective, precision: str, images, targets, tokens):
    """The training step's forward and backward (``training.train_step``) without the update:
    outputs and the gradient of every parameter as one float32 vector. fp16's loss is scaled
    as by its GradScaler, halving the scale from 2^16 until no gradient overflows."""
    scale = 2.0 ** 16 if precision == "fp16" else 1.0
    while True:
        model.zero_grad(set_to_none=True)
        with autocast(precision, CUDA):
            out = training_outputs(model, objective, images, targets, tokens)
        (out["loss"] * scale).backward()
        gradient = torch.cat([p.grad.float().flatten() / scale for p in model.parameters() if p.grad is not None])
        if torch.isfinite(gradient).all() or scale < 1:
            return out, gradient
        scale /= 2


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("model_name", ["RN50", "ViT-B/16"])
def test_autocast_against_float32(model_name, precision, exact_fp32, record_property):
    model, objective = build_model(model_name)
    images, targets, tokens = batch()
    reference, reference_gradient = forward_backward(model, objective, "fp32", images, targets, tokens)
    mixed, gradient = forward_backward(model, objective, precision, images, targets, tokens)
    measured = {
        "logits": (mixed["logits"].float() - reference["logits"]).abs().max().item(),
        "loss": abs(mixed["loss"].item() - reference["loss"].item()) / abs(reference["loss"].item()),
        "gradient_cosine": torch.nn.functional.cosine_similarity(gradient, reference_gradient, dim=0).item(),
    }
    record_property("measured", measured)
    record_property("tolerances", TOLERANCES[precision])
    assert mixed["logits"].dtype == torch.float32  # the logits are computed in float32
    assert torch.isfinite(gradient).all()
    assert measured["logits"] <= TOLERANCES[precision]["logits"]
    assert measured["loss"] <= TOLERANCES[precision]["loss"]
    assert measured["gradient_cosine"] >= TOLERANCES[precision]["gradient_cosine"]


def test_fp16_with_its_grad_scaler_takes_a_finite_step(record_property):
    # The scaler starts at 2^16 and skips the steps whose gradients overflow, halving the scale.
    model, objective = build_model("ViT-B/16")
    cfg = model_config("ViT-B/16")
    trainer = training.Trainer(model, model, objective, build_optimizer(cfg, model.parameters(), CUDA), None,
                               grad_scaler("fp16", CUDA), "fp16", CUDA, max_nonfinite_steps=0)
    before = [p.detach().clone() for p in model.parameters()]
    images, targets, tokens = batch()
    steps = 0
    changed = 0
    while not changed and steps < 16:
        training.train_step(trainer, images, targets, tokens, training_state.TrainState(), epoch=0)
        steps += 1
        changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    record_property("steps_until_one_was_taken", steps)
    record_property("scale", trainer.scaler.get_scale())
    record_property("parameters_changed", f"{changed} of {len(before)}")
    assert changed == len(before)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fused_adamw_equals_the_unfused_step(exact_fp32, record_property):
    # lr 1e-3 rather than the paper's 1e-6: each step moves a weight by about lr, so a 1e-6
    # agreement after 3 steps says something.
    cfg = model_config("ViT-B/16", lr=1e-3)
    fused_model, objective = build_model("ViT-B/16")
    plain_model = copy.deepcopy(fused_model)
    fused = build_optimizer(cfg, fused_model.parameters(), CUDA)
    assert fused.defaults.get("fused") is True
    plain = torch.optim.AdamW(plain_model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9,
                              weight_decay=cfg.weight_decay, foreach=False, fused=False)
    initial = [p.detach().clone() for p in plain_model.parameters()]
    for step in range(3):
        images, targets, tokens = batch(seed=step)
        training_outputs(fused_model, objective, images, targets, tokens)["loss"].backward()
        # The same gradients for both: the optimisers alone are compared.
        for source, target in zip(fused_model.parameters(), plain_model.parameters()):
            target.grad = source.grad.clone()
        fused.step()
        plain.step()
        fused.zero_grad(set_to_none=True)
        plain.zero_grad(set_to_none=True)
    difference = max((a - b).abs().max().item() for a, b in zip(fused_model.parameters(), plain_model.parameters()))
    moved = max((a - b).abs().max().item() for a, b in zip(plain_model.parameters(), initial))
    record_property("max_parameter_difference", difference)
    record_property("max_parameter_change", moved)
    assert moved > 1e-3 and difference <= 1e-6


def outputs_and_gradients(model, objective, images, targets, tokens) -> dict:
    model.zero_grad(set_to_none=True)
    out = training_outputs(model, objective, images, targets, tokens)
    out["loss"].backward()
    return {"loss": out["loss"].detach(), "logits": out["logits"].detach(), "image_emb": out["image_emb"].detach(),
            **{name: p.grad.clone() for name, p in model.named_parameters()}}


def largest_difference(a: dict, b: dict) -> tuple[str, float]:
    """The entry of ``a`` farthest from the reference ``b``, and how far: relative to the
    entry's largest value, or to a thousandth of the largest value of all when that is
    smaller (some gradients, such as the attention keys' bias, are zero but for rounding)."""
    floor = 1e-3 * max(value.abs().max().item() for value in b.values())
    relative = {name: (a[name] - b[name]).abs().max().item() / max(b[name].abs().max().item(), floor)
                for name in b}
    name = max(relative, key=relative.get)
    return name, relative[name]


@pytest.mark.parametrize("conversion", ["channels_last", "sync_batchnorm"])
def test_resnet_layout_and_batchnorm_conversions_keep_the_outputs(conversion, exact_fp32, record_property):
    """``training.train`` puts ResNets in channels-last memory on CUDA; ``distribute_model``
    converts their batch norms to SyncBatchNorm under torchrun (alone in its process here,
    where it normalises with the batch's own statistics, as the plain batch norm does)."""
    plain, objective = build_model("RN50")
    converted = copy.deepcopy(plain)
    if conversion == "channels_last":
        converted = converted.to(memory_format=torch.channels_last)
    else:
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(converted)
        assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())
        assert converted.state_dict().keys() == plain.state_dict().keys()
    images, targets, tokens = batch()
    expected = outputs_and_gradients(plain, objective, images, targets, tokens)
    got = outputs_and_gradients(converted, objective, images, targets, tokens)
    name, relative = largest_difference(got, expected)
    record_property("largest_relative_difference", {"entry": name, "value": relative})
    assert relative <= 1e-4, name
    for module in (plain, converted):
        module.eval()
    with torch.no_grad():
        torch.testing.assert_close(converted.encode_images(images), plain.encode_images(images),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_peak_memory_of_a_vitb16_training_step_at_batch_8(precision, record_property):
    model, objective = build_model("ViT-B/16")
    optimizer = build_optimizer(model_config("ViT-B/16"), model.parameters(), CUDA)
    images, targets, tokens = batch()
    for _ in range(2):  # the second step: optimiser state allocated, as in a run
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with autocast(precision, CUDA):
            loss = training_outputs(model, objective, images, targets, tokens)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20
    record_property("peak_mib", round(peak, 1))
    assert torch.isfinite(loss) and peak > 0
