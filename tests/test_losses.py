"""Tests of tailclip.losses against hand-computed values, invariants and open_clip."""
import math

import pytest
import torch
from open_clip.loss import ClipLoss

import clip
from loss_examples import LOGITS, TARGETS
from tailclip.config import Config
from tailclip.factory import build_objective
from tailclip.losses import (
    AsymmetricLoss,
    BalancedAsymmetricLoss,
    ContrastiveLoss,
    TailCLIPObjective,
    clip_contrastive_loss,
)
from tailclip.model import TailCLIP

# The worked example's max(x) = 4, so z = x / 4.
Z = [[0.5, -0.25, 0.125], [0.25, 1.0, -0.5]]


def sigmoid(v):
    return 1 / (1 + math.exp(-v))


def bal_by_hand(z, y, smoothing=0.0, weights=None, gamma_neg=4.0, gamma_pos=0.0, clip=0.05,
                eps=1e-8):
    """The BAL formula of the paper, entry by entry, in plain Python on normalised logits z."""
    num_classes = len(z[0])
    total = 0.0
    for z_row, y_row in zip(z, y):
        for c, (zc, yc) in enumerate(zip(z_row, y_row)):
            p = sigmoid(zc)
            q = min(1 - p + clip, 1)
            t = (1 - smoothing) * yc + smoothing / num_classes if smoothing > 0 else yc
            u = 1 - yc
            w = weights[c] + 1 if weights else 1
            log_terms = t * math.log(max(p, eps)) * w + u * math.log(max(q, eps))
            total += (1 - p * t - q * u) ** (gamma_pos * t + gamma_neg * u) * log_terms
    return -total / (len(z) * num_classes)


def unguarded_bal(x, y, smoothing=0.0, weights=None, gamma_neg=4.0, gamma_pos=0.0, clip=0.05,
                  eps=1e-8):
    """BAL without the two guards, with the operations in the order of the paper's code."""
    if smoothing > 0:
        t = (1 - smoothing) * y + smoothing / y.shape[1]
    else:
        t = y
    u = 1 - y
    p = torch.sigmoid(x / x.max())
    q = ((1 - p) + clip).clamp(max=1)
    loss = t * torch.log(p.clamp(min=eps))
    if weights is not None:
        loss = loss * (weights + 1)
    loss = loss + u * torch.log(q.clamp(min=eps))
    loss = loss * torch.pow(1 - p * t - q * u, gamma_pos * t + gamma_neg * u)
    return -loss.mean()


def random_problem(seed, batch=6, classes=5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.rand(batch, classes, generator=g, dtype=dtype) * 20 - 5)
    targets = (torch.rand(batch, classes, generator=g) < 0.3).to(dtype)
    weights = torch.rand(classes, generator=g, dtype=dtype)
    return logits, targets, weights


# ---------------------------------------------------------------- BAL: values


def test_bal_hand_computed_2x3():
    x, y = torch.tensor(LOGITS), torch.tensor(TARGETS, dtype=torch.float32)
    # Only the normalisation is left to the formula: check z = x / max(x) = x / 4 first.
    assert [[v / 4 for v in row] for row in LOGITS] == Z
    expected = bal_by_hand(Z, TARGETS)
    assert expected == pytest.approx(0.3095168928352789, abs=1e-12)
    assert BalancedAsymmetricLoss()(x, y).item() == pytest.approx(expected, abs=1e-6)


def test_bal_hand_computed_2x3_with_smoothing_weights_and_gamma_pos():
    x, y = torch.tensor(LOGITS), torch.tensor(TARGETS, dtype=torch.float32)
    weights = [0.5, 1.0, 0.25]
    for gamma_pos, literal in ((0.0, 0.41187376887683597), (1.0, 0.22283996305697765)):
        expected = bal_by_hand(Z, TARGETS, smoothing=0.1, weights=weights, gamma_pos=gamma_pos)
        assert expected == pytest.approx(literal, abs=1e-12)
        loss = BalancedAsymmetricLoss(gamma_pos=gamma_pos, label_smoothing=0.1,
                                      class_weights=torch.tensor(weights))
        assert loss(x, y).item() == pytest.approx(expected, abs=1e-6)


def test_bal_divides_by_the_batch_maximum():
    x, y, _ = random_problem(0)
    loss = BalancedAsymmetricLoss(label_smoothing=0.1)
    # z = x / max(x) is invariant to a positive rescaling of all logits ...
    assert loss(x * 7.5, y).item() == pytest.approx(loss(x, y).item(), abs=1e-6)
    # ... and is the maximum of the whole tensor, not of each row.
    z_by_row = x / x.max(dim=1, keepdim=True).values
    z_whole = (x / x.max()).tolist()
    assert bal_by_hand(z_whole, y.tolist(), smoothing=0.1) == pytest.approx(loss(x, y).item(), abs=1e-6)
    assert bal_by_hand(z_by_row.tolist(), y.tolist(), smoothing=0.1) != pytest.approx(
        loss(x, y).item(), abs=1e-4)


def test_label_smoothing_only_changes_the_positive_term():
    # Without focusing and margin, L = -mean(t log p + u log q); smoothing changes t only,
    # so the difference is -mean((t - y) log p) and the log q part is untouched.
    x, y, _ = random_problem(1)
    a, num_classes = 0.2, y.shape[1]
    plain = BalancedAsymmetricLoss(gamma_neg=0.0, clip=0.0)
    smoothed = BalancedAsymmetricLoss(gamma_neg=0.0, clip=0.0, label_smoothing=a)
    log_p = torch.log(torch.sigmoid(x / x.max()))
    t = (1 - a) * y + a / num_classes
    expected_difference = -((t - y) * log_p).mean()
    difference = smoothed(x, y) - plain(x, y)
    assert difference.item() == pytest.approx(expected_difference.item(), abs=1e-6)


def test_class_weights_multiply_the_positive_term_by_w_plus_one():
    x, y, w = random_problem(2)
    plain = BalancedAsymmetricLoss(gamma_neg=0.0, clip=0.0)
    weighted = BalancedAsymmetricLoss(gamma_neg=0.0, clip=0.0, class_weights=w)
    log_p = torch.log(torch.sigmoid(x / x.max()))
    # (w + 1) * y log p = y log p + w * y log p: the extra part is -mean(w y log p).
    expected_difference = -(w * y * log_p).mean()
    assert (weighted(x, y) - plain(x, y)).item() == pytest.approx(expected_difference.item(), abs=1e-6)
    # Negatives carry no weight: with no positive at all the weights change nothing.
    no_positives = torch.zeros_like(y)
    focused = BalancedAsymmetricLoss(class_weights=w)
    assert torch.equal(focused(x, no_positives), BalancedAsymmetricLoss()(x, no_positives))


def test_class_weights_are_a_buffer_outside_the_state_dict():
    w = torch.rand(5, dtype=torch.float64)
    loss = BalancedAsymmetricLoss(class_weights=w)
    assert loss.class_weights.dtype == torch.float32
    assert any(b is loss.class_weights for b in loss.buffers())
    assert "class_weights" not in loss.state_dict()
    assert loss.to(torch.float64).class_weights.dtype == torch.float64


def test_low_precision_logits_are_computed_in_float32():
    x, y, w = random_problem(4)
    x16 = x.to(torch.bfloat16)
    loss = BalancedAsymmetricLoss(label_smoothing=0.1, class_weights=w)
    result = loss(x16, y.to(torch.bfloat16))
    assert result.dtype == torch.float32
    assert torch.equal(result, loss(x16.float(), y))


# ---------------------------------------------------------------- BAL: gradients


def test_bal_gradient_matches_finite_differences_through_the_focusing_weight():
    x, y, w = random_problem(5, batch=4, classes=3, dtype=torch.float64)
    x.requires_grad_(True)
    loss = BalancedAsymmetricLoss(gamma_pos=1.0, label_smoothing=0.1, class_weights=w)
    assert torch.autograd.gradcheck(lambda v: loss(v, y), (x,), eps=1e-6, atol=1e-7)

    # The focusing weight is part of the graph: detaching it gives another gradient.
    def detached_focus(v):
        t = 0.9 * y + 0.1 / 3
        p = torch.sigmoid(v / v.max())
        q = (1 - p + 0.05).clamp(max=1)
        log_terms = t * torch.log(p) * (w.float().double() + 1) + (1 - y) * torch.log(q)
        focus = torch.pow(1 - p * t - q * (1 - y), 1.0 * t + 4.0 * (1 - y)).detach()
        return -(focus * log_terms).mean()

    (full,) = torch.autograd.grad(loss(x, y), x)
    (partial,) = torch.autograd.grad(detached_focus(x), x)
    assert detached_focus(x).item() == pytest.approx(loss(x, y).item(), abs=1e-12)
    assert not torch.allclose(full, partial, atol=1e-6)


def test_loss_decreases_when_a_positive_logit_rises_or_a_negative_falls():
    x, y, w = random_problem(6)
    loss = BalancedAsymmetricLoss(label_smoothing=0.1, class_weights=w)
    top = x.argmax()
    base = loss(x, y).item()
    positives = [i for i in y.flatten().nonzero().flatten().tolist() if i != top]
    negatives = [i for i in (1 - y).flatten().nonzero().flatten().tolist() if i != top]
    assert positives and negatives
    for index in positives:
        raised = x.flatten().clone()
        raised[index] += 0.5  # stays below the maximum (20 - 5 = 15 at most, gap checked)
        assert raised[index] < x.max()
        assert loss(raised.view_as(x), y).item() < base
    for index in negatives:
        lowered = x.flatten().clone()
        lowered[index] -= 0.5
        assert loss(lowered.view_as(x), y).item() < base


# ---------------------------------------------------------------- BAL: guards


def test_guard_all_negative_logits_divides_by_max_abs():
    x, y, w = random_problem(7)
    x = -x.abs() - 0.1
    x.requires_grad_(True)
    loss = BalancedAsymmetricLoss(gamma_pos=1.0, label_smoothing=0.1, class_weights=w)
    value = loss(x, y)
    (grad,) = torch.autograd.grad(value, x)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    # x / max(x) would flip every sign (p near 1 for the most negative logits).
    z = (x / x.abs().max()).tolist()
    assert value.item() == pytest.approx(
        bal_by_hand(z, y.tolist(), smoothing=0.1, weights=w.tolist(), gamma_pos=1.0), abs=1e-6)


def test_guard_all_zero_logits():
    x = torch.zeros(3, 4, requires_grad=True)
    y = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]])
    value = BalancedAsymmetricLoss(label_smoothing=0.1)(x, y)
    (grad,) = torch.autograd.grad(value, x)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert value.item() == pytest.approx(bal_by_hand([[0.0] * 4] * 3, y.tolist(), smoothing=0.1), abs=1e-6)


def test_guard_clamps_the_focusing_base_for_smoothed_far_negatives():
    # Logits below -3 * max give p = sigmoid(z) < sigmoid(-3) < clip = 0.05 ... and with
    # label smoothing a negative then has 1 - p t - q u = -p a / C < 0.
    x = torch.tensor([[1.0, -3.5, -4.0], [0.5, -5.0, 0.2]], requires_grad=True)
    y = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])
    unguarded = unguarded_bal(x, y, smoothing=0.1, gamma_pos=1.0)
    assert torch.isnan(unguarded)  # the defect the guard removes (fractional power)
    loss = BalancedAsymmetricLoss(gamma_pos=1.0, label_smoothing=0.1)
    value = loss(x, y)
    (grad,) = torch.autograd.grad(value, x)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    # The clamped entries (x < -3, max(x) = 1) get weight 0; the others follow the formula.
    expected = 0.0
    for x_row, y_row in zip(x.tolist(), y.tolist()):
        for xc, yc in zip(x_row, y_row):
            if xc < -3:
                continue
            p, t, u = sigmoid(xc), 0.9 * yc + 0.1 / 3, 1 - yc
            q = min(1 - p + 0.05, 1)
            expected += (1 - p * t - q * u) ** (t + 4 * u) * (t * math.log(p) + u * math.log(q))
    assert value.item() == pytest.approx(-expected / 6, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("smoothing,gamma_pos,use_weights", [(0.0, 0.0, False), (0.1, 0.0, True),
                                                             (0.05, 1.0, True)])
def test_bal_is_bit_identical_to_the_unguarded_formula_where_finite(seed, smoothing, gamma_pos,
                                                                    use_weights):
    x, y, w = random_problem(seed, batch=8, classes=6)
    x = x.abs() * 0.5 + 1.0  # positive logits, as CLIP's: no guard is needed
    weights = w if use_weights else None
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    reference = unguarded_bal(x1, y, smoothing=smoothing, weights=weights, gamma_pos=gamma_pos)
    value = BalancedAsymmetricLoss(gamma_pos=gamma_pos, label_smoothing=smoothing,
                                   class_weights=weights)(x2, y)
    assert torch.isfinite(reference)
    reference.backward()
    value.backward()
    assert torch.equal(value, reference)
    assert torch.equal(x2.grad, x1.grad)


# ---------------------------------------------------------------- validation


def test_bal_rejects_class_weights_that_are_not_1d():
    # The settings' ranges are the config's to check (tests/test_config.py).
    with pytest.raises(ValueError, match="1-D"):
        BalancedAsymmetricLoss(class_weights=torch.ones(2, 3))


def test_bal_rejects_bad_shapes():
    loss = BalancedAsymmetricLoss(class_weights=torch.ones(4))
    with pytest.raises(ValueError, match="does not match"):
        loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\[batch, classes\]"):
        loss(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="4 entries but the logits have 3 classes"):
        loss(torch.ones(2, 3), torch.zeros(2, 3))


# ---------------------------------------------------------------- ASL


def test_asl_equals_the_paper_formula_on_a_worked_example():
    # Ridnik et al. (2021), eq. 1-5: L+ = (1 - p)^g+ log(p), L- = p_m^g- log(1 - p_m),
    # p_m = max(p - m, 0), on sigmoid of the raw logits (no max-normalisation).
    gamma_pos, gamma_neg, margin = 1.0, 4.0, 0.05
    paper_sum = 0.0
    for x_row, y_row in zip(LOGITS, TARGETS):
        for xc, yc in zip(x_row, y_row):
            p = sigmoid(xc)
            p_m = max(p - margin, 0.0)
            if yc:
                paper_sum += -((1 - p) ** gamma_pos) * math.log(p)
            else:
                paper_sum += -(p_m ** gamma_neg) * math.log(1 - p_m)
    assert paper_sum == pytest.approx(2.226529641698245, abs=1e-12)
    loss = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=margin)
    value = loss(torch.tensor(LOGITS), torch.tensor(TARGETS, dtype=torch.float32))
    # Our reduction is the mean over the B * C = 6 entries (the paper sums).
    assert value.item() == pytest.approx(paper_sum / 6, abs=1e-6)


def test_asl_uses_raw_logits():
    x, y, _ = random_problem(8)
    loss = AsymmetricLoss()
    assert loss(x * 2, y).item() != pytest.approx(loss(x, y).item(), abs=1e-4)


# ---------------------------------------------------------------- contrastive


def normalised(batch, dim, seed):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(batch, dim, generator=g)
    return e / e.norm(dim=-1, keepdim=True)


def test_contrastive_loss_equals_open_clip():
    image, text = normalised(8, 16, 0), normalised(8, 16, 1)
    scale = torch.tensor(1 / 0.07)
    image.requires_grad_(True)
    ours = clip_contrastive_loss(image, text, scale)
    theirs = ClipLoss()(image, text, scale)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    (g_ours,) = torch.autograd.grad(ours, image)
    (g_theirs,) = torch.autograd.grad(ClipLoss()(image, text, scale), image)
    assert torch.allclose(g_ours, g_theirs, atol=1e-6)


def test_contrastive_loss_keeps_duplicate_captions_as_negatives():
    image, text = normalised(4, 8, 2), normalised(4, 8, 3)
    text[1] = text[0]
    scale = torch.tensor(10.0)
    assert clip_contrastive_loss(image, text, scale).item() == pytest.approx(
        ClipLoss()(image, text, scale).item(), rel=1e-6)


def test_contrastive_loss_is_float32_under_autocast():
    image, text = normalised(8, 16, 4), normalised(8, 16, 5)
    scale = torch.tensor(1 / 0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = clip_contrastive_loss(image, text, scale)
    assert under_autocast.dtype == torch.float32
    assert torch.equal(under_autocast, clip_contrastive_loss(image, text, scale))


def test_contrastive_loss_rejects_mismatched_embeddings():
    with pytest.raises(ValueError, match="embeddings"):
        clip_contrastive_loss(torch.zeros(4, 8), torch.zeros(3, 8), torch.tensor(1.0))


# ---------------------------------------------------------------- objective


def objective_inputs(seed=0):
    x, y, w = random_problem(seed, batch=8, classes=5)
    return dict(image_emb=normalised(8, 16, seed), caption_emb=normalised(8, 16, seed + 1),
                logit_scale=torch.tensor(1 / 0.07), logits=x, targets=y), w


def test_objective_sums_clip_and_lambda_times_bal():
    inputs, w = objective_inputs()
    bal = BalancedAsymmetricLoss(label_smoothing=0.1, class_weights=w)
    out = TailCLIPObjective({"clip": ContrastiveLoss(), "bal": bal}, asl_mul=2.5)(**inputs)
    clip_term = clip_contrastive_loss(inputs["image_emb"], inputs["caption_emb"], inputs["logit_scale"])
    bal_term = BalancedAsymmetricLoss(label_smoothing=0.1, class_weights=w)(inputs["logits"], inputs["targets"])
    assert set(out) == {"loss", "loss_clip", "loss_bal"}
    assert torch.equal(out["loss_clip"], clip_term)
    assert torch.equal(out["loss_bal"], bal_term)
    assert out["loss"].item() == pytest.approx(clip_term.item() + 2.5 * bal_term.item(), rel=1e-6)


def bal_objective(class_weights, **options):
    """`build_objective` of BAL alone for a tiny model, with config ``options``."""
    model = TailCLIP(clip.create_model("ViT-tiny"), clip.tokenize(["a photo of a " + str(c) for c in range(5)]))
    return build_objective(Config(loss_function=["bal"], **options), model, class_weights)


def test_objective_uses_class_weights_only_when_asked():
    inputs, w = objective_inputs(1)
    unweighted = BalancedAsymmetricLoss()(inputs["logits"], inputs["targets"])
    weighted = BalancedAsymmetricLoss(class_weights=w)(inputs["logits"], inputs["targets"])
    assert not torch.equal(weighted, unweighted)
    off = bal_objective(w, use_weighted_loss=False)
    assert torch.equal(off(**inputs)["loss_bal"], unweighted)
    on = bal_objective(w)
    assert torch.equal(on(**inputs)["loss_bal"], weighted)


def test_objective_asl_and_clip_only():
    inputs, _ = objective_inputs(2)
    out = TailCLIPObjective({"asl": AsymmetricLoss()}, asl_mul=0.5)(**inputs)
    asl_term = AsymmetricLoss()(inputs["logits"], inputs["targets"])
    assert set(out) == {"loss", "loss_asl"}
    assert out["loss"].item() == pytest.approx(0.5 * asl_term.item(), rel=1e-6)
    only_clip = TailCLIPObjective({"clip": ContrastiveLoss()})(**{**inputs, "logits": None})
    assert set(only_clip) == {"loss", "loss_clip"}
