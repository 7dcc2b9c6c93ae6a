"""The sigmoid contrastive term (SigLIP) against open_clip's SigLipLoss, and how
``contrastive`` picks the term."""
import pytest
import torch
import torch.nn.functional as F

from tailclip.config import Config
from tailclip.errors import TailCLIPError
from tailclip.factory import contrastive_kind
from tailclip.losses import ContrastiveLoss, TailCLIPObjective, sigmoid_contrastive_loss

open_clip_loss = pytest.importorskip("open_clip.loss")


def embeddings(batch=6, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    image, text = (F.normalize(torch.randn(batch, dim, generator=generator, dtype=torch.float64), dim=-1)
                   for _ in range(2))
    return image, text


@pytest.mark.parametrize("scale, bias", [(10.0, -10.0), (3.0, 0.5), (100.0, -2.0)])
def test_sigmoid_loss_equals_open_clip_siglip_loss(scale, bias):
    image, text = embeddings()
    image.requires_grad_(True)
    logit_scale, logit_bias = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (scale, bias))
    ours = sigmoid_contrastive_loss(image, text, logit_scale, logit_bias)
    reference = open_clip_loss.SigLipLoss()(image, text, logit_scale, logit_bias)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    ours_grads = torch.autograd.grad(ours, (image, logit_scale, logit_bias))
    reference_grads = torch.autograd.grad(reference, (image, logit_scale, logit_bias))
    for mine, theirs in zip(ours_grads, reference_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


def test_sigmoid_loss_by_hand_for_two_pairs():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale, bias = torch.tensor(2.0), torch.tensor(-1.0)
    # logits 2 * cos - 1: [[1, 0.2], [-1, 0.6]]; diagonal positive, the rest negative.
    expected = -(F.logsigmoid(torch.tensor(1.0)) + F.logsigmoid(torch.tensor(-0.2))
                 + F.logsigmoid(torch.tensor(1.0)) + F.logsigmoid(torch.tensor(0.6))) / 2
    torch.testing.assert_close(sigmoid_contrastive_loss(image, text, scale, bias), expected)


def cfg(contrastive):
    return Config(loss_function=["clip"], contrastive=contrastive)


@pytest.mark.parametrize("contrastive, has_bias, expected", [
    ("auto", True, "sigmoid"), ("auto", False, "softmax"),
    ("softmax", True, "softmax"), ("sigmoid", True, "sigmoid"), ("softmax", False, "softmax")])
def test_auto_follows_the_backbone_and_an_explicit_choice_wins(contrastive, has_bias, expected):
    assert contrastive_kind(cfg(contrastive), has_bias) == expected


def test_sigmoid_without_a_logit_bias_is_a_one_line_error():
    with pytest.raises(TailCLIPError, match="contrastive = 'sigmoid' needs a backbone with a learned logit bias"):
        contrastive_kind(cfg("sigmoid"), has_logit_bias=False)


def test_objective_uses_the_chosen_term():
    image, text = embeddings(batch=4)
    scale, bias = torch.tensor(5.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    logits, targets = torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, 3)
    sigmoid = TailCLIPObjective({"clip": ContrastiveLoss(contrastive_kind(cfg("auto"), has_logit_bias=True))})(
        image, text, scale, logits, targets, logit_bias=bias)
    softmax = TailCLIPObjective({"clip": ContrastiveLoss(contrastive_kind(cfg("softmax"), has_logit_bias=True))})(
        image, text, scale, logits, targets, logit_bias=bias)
    torch.testing.assert_close(sigmoid["loss"], open_clip_loss.SigLipLoss()(image, text, scale, bias))
    torch.testing.assert_close(softmax["loss"], open_clip_loss.ClipLoss()(image, text, scale))
