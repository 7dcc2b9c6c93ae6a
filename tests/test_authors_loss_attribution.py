"""Which loss each of the authors' runs trained: read from when it started (their "asl" was
BAL, then a plain asymmetric loss summed over the batch, then averaged), checked against the
scale of its epoch-1 loss; our "asl" is their averaged plain loss on the same logits; and no
group of runs matched as "the same settings" mixes losses."""
import json
from collections import defaultdict

import pytest
import torch

from tailclip.config import Config
from tailclip.losses import AsymmetricLoss, BalancedAsymmetricLoss
from tailclip.tools.authors_record import (
    RECORD_FILE,
    authors_config,
    event_time,
    load_record,
    matching_runs,
)

# The runs that logged "asl" and trained the plain loss (the shared data's README lists them).
PLAIN_SUMMED = {"coco_mlt_vitb16_nocaptions_asl_2"}
PLAIN_AVERAGED = {f"coco_mlt_vitb16_nocaptions_{name}" for name in ("asl_mean", "clip_asl_3", "clip_asl_sw_4")} | {
    f"voc_mlt_vitb16_nocaptions_{name}" for name in ("asl_2", "asl_3", "clip_asl_3", "clip_asl_sw_3")}


@pytest.fixture(scope="module")
def record():
    return load_record()


def test_each_of_the_121_runs_trained_the_loss_its_time_says():
    entries = json.loads(RECORD_FILE.read_text())["runs"]
    assert len(entries) == 121
    trained = defaultdict(list)
    for entry in entries:
        terms = authors_config(entry["config"], event_time(entry))["loss_function"]
        trained[next((term for term in terms if term != "clip"), None)].append(entry["run"])
    assert sorted(trained["asl_sum"]) == sorted(PLAIN_SUMMED)
    assert sorted(trained["asl"]) == sorted(PLAIN_AVERAGED)
    assert len(trained[None]) == 2 and len(trained["bal"]) == 121 - 8 - 2  # None: the contrastive term alone


def _scale_group(run) -> tuple:
    """What sets a run's loss scale but the loss: benchmark, backbone, contrastive term, lambda, batch."""
    config = run.config
    return (config["dataset"], config["model_name"], "clip" in config["loss_function"], config["asl_mul"],
            config["batch_size"])


def test_the_attribution_agrees_with_each_runs_epoch_1_loss_scale(record):
    groups = defaultdict(lambda: defaultdict(list))
    for run in record:
        if run.class_loss:
            groups[_scale_group(run)][run.class_loss].append(run.epochs[0]["train/loss"])
    compared = 0
    for key, losses in groups.items():
        if "asl" in losses and "bal" in losses:  # the plain loss on raw CLIP logits: far above BAL's
            assert min(losses["asl"]) > 2 * max(losses["bal"]), key
            compared += 1
    assert compared == 4  # COCO and VOC, the loss alone and with the contrastive term
    # The summed run: the averaged one's scale times batch x classes (8 x 80), within 10 %.
    [summed] = [run for run in record if run.class_loss == "asl_sum"]
    [averaged] = [run for run in record if run.label == "coco_mlt_vitb16_nocaptions_asl_mean"]
    assert _scale_group(summed) == _scale_group(averaged)
    ratio = summed.epochs[0]["train/loss"] / averaged.epochs[0]["train/loss"]
    assert 0.9 * 8 * 80 < ratio < 1.1 * 8 * 80


def test_no_group_of_the_same_settings_mixes_losses(record):
    for run in record:
        group = matching_runs(run.config, record)
        assert run in group
        assert {other.class_loss for other in group} == {run.class_loss}, run.label
        scales = [other.epochs[0]["train/loss"] for other in group]
        assert max(scales) < 2 * min(scales), [other.label for other in group]


def test_our_terms_are_held_against_the_runs_of_the_loss_they_train(record):
    coco_alone = Config(dataset="coco_mlt", loss_function=["asl"], asl_gamma_neg=9.8, use_sample_weights=False,
                        use_weighted_loss=False).to_dict()
    assert [run.label for run in matching_runs(coco_alone, record)] == ["coco_mlt_vitb16_nocaptions_asl_mean"]
    coco_bal = {**coco_alone, "loss_function": ["bal"]}
    assert [run.label for run in matching_runs(coco_bal, record)] == ["coco_mlt_vitb16_nocaptions_asl"]
    # The plain loss has no smoothing and no class weights: those options do not keep ours from it.
    assert matching_runs({**coco_alone, "label_smoothing": 0.1, "use_weighted_loss": True}, record) == \
        matching_runs(coco_alone, record)
    assert matching_runs({**coco_alone, "asl_gamma_neg": 4.0}, record) == []  # its focusing acts
    # The record's best VOC-MLT run trained the plain loss with the contrastive term and the sampler.
    best = max((run for run in record if run.config["dataset"] == "voc_mlt"),
               key=lambda run: max(epoch["val/mAP"] for epoch in run.epochs))
    assert best.label == "voc_mlt_vitb16_nocaptions_clip_asl_sw_3" and best.class_loss == "asl"
    assert round(100 * max(epoch["val/mAP"] for epoch in best.epochs), 2) == 93.05
    voc = Config(dataset="voc_mlt", loss_function=["clip", "asl"], asl_mul=0.4, asl_gamma_neg=9.8,
                 sample_weights_power=1.35, class_weights_power=1.35).to_dict()
    assert [run.label for run in matching_runs(voc, record)] == [best.label]


def their_plain_loss(logits, targets, gamma_neg, gamma_pos, clip, eps, reduction):
    """The authors' plain asymmetric loss after their split (restated from their code):
    p = sigmoid(x), q = min(1 - p + clip, 1); per entry -[y log max(p, eps) + (1 - y) log max(q, eps)]
    times (1 - p y - q (1 - y)) ** (gamma_pos y + gamma_neg (1 - y)); summed or averaged."""
    p = torch.sigmoid(logits)
    q = (1 - p + clip).clamp(max=1)
    entry = targets * torch.log(p.clamp(min=eps)) + (1 - targets) * torch.log(q.clamp(min=eps))
    entry = entry * (1 - p * targets - q * (1 - targets)) ** (gamma_pos * targets + gamma_neg * (1 - targets))
    return -(entry.sum() if reduction == "sum" else entry.mean())


def test_our_asl_equals_their_averaged_plain_loss_on_the_same_logits():
    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(8, 512, generator=generator), dim=1)
    classes = torch.nn.functional.normalize(torch.randn(80, 512, generator=generator), dim=1)
    logits = (100 * images @ classes.T).double()  # CLIP's scale: 100 x cosine
    targets = (torch.rand(8, 80, generator=generator) < 0.1).double()
    options = {"gamma_neg": 9.8, "gamma_pos": 0.0, "clip": 0.05, "eps": 1e-8}
    ours = AsymmetricLoss(**options)(logits, targets)
    averaged = their_plain_loss(logits, targets, **options, reduction="mean")
    assert ours.item() == pytest.approx(averaged.item(), rel=1e-12)
    summed = their_plain_loss(logits, targets, **options, reduction="sum")
    assert summed.item() == pytest.approx(8 * 80 * ours.item(), rel=1e-12)  # no option of ours
    assert BalancedAsymmetricLoss(**options)(logits, targets).item() < ours.item() / 2  # BAL: another loss
