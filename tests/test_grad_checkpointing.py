"""Gradient checkpointing (`grad_checkpointing = True`): the same losses, gradients and
BatchNorm statistics as without it, every residual block recomputed in the backward pass,
and fewer tensors kept for it; in full fine-tuning and in the prompt-learning modes."""
import pytest
import torch

import clip
from clip.model import Bottleneck, ResidualAttentionBlock
from tailclip import factory
from tailclip.config import Config

CLASS_NAMES = ["red circle", "blue square", "green cross"]
TARGETS = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
CASES = [("ViT-tiny", "full"), ("RN-tiny", "full"), ("ViT-tiny", "prompt+visual"), ("RN-tiny", "prompt")]


def build(model_name: str, finetune: str, grad_checkpointing: bool):
    cfg = Config(model_name=model_name, pretrained=False, size=64, finetune=finetune,
                 grad_checkpointing=grad_checkpointing)
    torch.manual_seed(0)  # the same initial weights with and without checkpointing
    return factory.build_model(cfg, [cfg.class_caption + name for name in CLASS_NAMES]).train()


def loss_of_a_batch(model) -> torch.Tensor:
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    captions = clip.tokenize(["a photo of a red circle, green cross", "a photo of a blue square"])
    objective = factory.build_objective(Config(), model)  # the default's: clip + BAL
    return objective(**model(images, captions), targets=TARGETS)["loss"]


class BlockCalls:
    """Counts the forward calls of every residual block, separately before and during backward."""

    def __init__(self, model):
        self.forward, self.backward, self.in_backward = {}, {}, False
        for name, module in model.named_modules():
            if isinstance(module, (ResidualAttentionBlock, Bottleneck)):
                module.register_forward_pre_hook(lambda *_, name=name: self._count(name))

    def _count(self, name):
        calls = self.backward if self.in_backward else self.forward
        calls[name] = calls.get(name, 0) + 1


def saved_tensor_bytes(model) -> int:
    """Bytes autograd keeps for the backward pass outside checkpointed blocks (a checkpointed
    block hides its tensors from outer hooks and keeps only what it needs to recompute)."""
    saved = {}

    def pack(tensor):
        saved[(tensor.untyped_storage().data_ptr(), tensor.dtype)] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_of_a_batch(model)
    return sum(saved.values())


@pytest.mark.parametrize("model_name, finetune", CASES)
def test_same_loss_gradients_and_statistics_with_every_block_recomputed(model_name, finetune):
    results = []
    for grad_checkpointing in (False, True):
        model = build(model_name, finetune, grad_checkpointing)
        calls = BlockCalls(model)
        loss = loss_of_a_batch(model)
        calls.in_backward = True
        loss.backward()
        gradients = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        results.append((loss, gradients, model.state_dict(), calls))
    (loss, gradients, state, calls), (ckpt_loss, ckpt_gradients, ckpt_state, ckpt_calls) = results

    assert torch.equal(ckpt_loss, loss)
    assert gradients.keys() == ckpt_gradients.keys()
    for name, gradient in gradients.items():
        assert gradient is not None and torch.equal(ckpt_gradients[name], gradient), name
    # BatchNorm running statistics counted each batch once, not again when recomputed.
    for key, tensor in state.items():
        assert torch.equal(ckpt_state[key], tensor), key

    assert calls.backward == {}
    if finetune == "full":  # every block of both towers is run again, once per forward call
        assert ckpt_calls.backward == ckpt_calls.forward == calls.forward
    else:  # only the blocks gradient flows through: the frozen ResNet is not rerun
        rerun_towers = {name.split(".")[1] for name in ckpt_calls.backward}
        assert rerun_towers == ({"visual", "transformer"} if finetune == "prompt+visual" else {"transformer"})


@pytest.mark.parametrize("model_name", ["ViT-tiny", "RN-tiny"])
def test_checkpointing_keeps_less_for_the_backward_pass(model_name):
    full = saved_tensor_bytes(build(model_name, "full", grad_checkpointing=False))
    checkpointed = saved_tensor_bytes(build(model_name, "full", grad_checkpointing=True))
    assert checkpointed < 0.5 * full


def test_no_recomputation_without_autograd():
    model = build("ViT-tiny", "full", grad_checkpointing=True)
    calls = BlockCalls(model)
    with torch.no_grad():
        loss_of_a_batch(model)
    assert calls.forward and calls.backward == {}


def test_option_reaches_both_towers():
    model = build("RN-tiny", "full", grad_checkpointing=True).clip_model
    assert model.visual.grad_checkpointing and model.transformer.grad_checkpointing
    model.set_grad_checkpointing(False)
    assert not (model.visual.grad_checkpointing or model.transformer.grad_checkpointing)


def test_compiled_checkpointed_resnet_step_matches_eager():
    # `compile = True` with checkpointing: one graph (fullgraph raises at a break), the same
    # gradients and BatchNorm statistics as eager without checkpointing. (The ResNet, whose
    # BatchNorm blocks take another path than the ViT's blocks; "aot_eager" traces forward
    # and backward as inductor does, without its C++ compilation.)
    eager, compiled = build("RN-tiny", "full", False), build("RN-tiny", "full", True)
    loss_of_a_batch(eager).backward()
    loss_of_a_batch(torch.compile(compiled, backend="aot_eager", fullgraph=True)).backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, value), other in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(other, value, rtol=1e-4, atol=1e-6, msg=name)
