"""TensorBoard pictures: per-class AP bar chart, tail PR curves, HParams (tailclip.engine.visualize)."""
import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from PIL import Image
from sklearn.metrics import precision_recall_curve
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util
from torch.utils.tensorboard import SummaryWriter

from tailclip.engine import visualize

NUM_CLASSES = 20
NAMES = [f"class{c:02d}" for c in range(NUM_CLASSES)]
# Interleaved on purpose, so that grouping really reorders the bars.
GROUPS = {"head": [0, 3, 7, 11, 15, 19], "medium": [1, 4, 8, 12, 16, 18],
          "tail": [2, 5, 6, 9, 10, 13, 14, 17]}


def _ap() -> np.ndarray:
    ap = np.random.default_rng(0).uniform(0.2, 1.0, NUM_CLASSES)
    ap[9] = np.nan  # a tail class with no positive test image
    return ap


def _bars(figure):
    """(class name, height, colour) of every bar, left to right."""
    axes = figure.axes[0]
    labels = [tick.get_text() for tick in axes.get_xticklabels()]
    bars = sorted(axes.patches, key=lambda bar: bar.get_x())
    return [(label, bar.get_height(), to_hex(bar.get_facecolor()))
            for label, bar in zip(labels, bars)]


def test_bar_chart_has_one_bar_per_class_coloured_by_group():
    ap = _ap()
    figure = visualize.per_class_ap_figure(ap, NAMES, GROUPS)
    assert len(figure.axes[0].patches) == NUM_CLASSES
    bars = _bars(figure)
    group_of = {c: name for name, members in GROUPS.items() for c in members}
    expected_order = GROUPS["head"] + GROUPS["medium"] + GROUPS["tail"]
    assert [label for label, _, _ in bars] == [NAMES[c] for c in expected_order]
    for (_, height, colour), c in zip(bars, expected_order):
        assert colour == visualize.GROUP_COLORS[group_of[c]]
        assert height == pytest.approx(0.0 if np.isnan(ap[c]) else ap[c] * 100)
    title = figure.axes[0].get_title()
    # Means by hand; the NaN class is left out of the tail mean, as in tailclip.metrics.
    tail = [ap[c] for c in GROUPS["tail"] if c != 9]
    assert f"tail {np.mean(tail) * 100:.1f}" in title
    assert f"head {np.mean(ap[GROUPS['head']]) * 100:.1f}" in title
    assert f"mAP {np.nanmean(ap) * 100:.1f}" in title
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["head (6)", "medium (6)", "tail (8)"]


def test_bar_chart_sorted_by_frequency_when_counts_given():
    counts = np.random.default_rng(1).permutation(NUM_CLASSES) * 10 + 1
    bars = _bars(visualize.per_class_ap_figure(torch.tensor(_ap()), NAMES, GROUPS,
                                               class_counts=counts))
    assert [label for label, _, _ in bars] == [NAMES[c] for c in np.argsort(-counts)]


def test_bar_chart_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="expected \\(20,\\)"):
        visualize.per_class_ap_figure(np.ones(19), NAMES, GROUPS)
    with pytest.raises(ValueError, match="group 'tail' holds class index 20"):
        visualize.per_class_ap_figure(np.ones(20), NAMES, {"tail": [20]})


def test_png_is_written_and_valid(tmp_path):
    path = visualize.save_per_class_ap_png(tmp_path / "run" / "per_class_ap.png",
                                           list(_ap()), NAMES, GROUPS)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > image.height > 100
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    # The tail colour is really painted (the bars are drawn, not only the legend).
    tail_rgb = np.array(Image.new("RGB", (1, 1), visualize.GROUP_COLORS["tail"]).getpixel((0, 0)))
    assert (np.abs(pixels.astype(int) - tail_rgb).sum(1) == 0).sum() > 500


@pytest.mark.parametrize("kind", ["probabilities", "logits_with_ties"])
def test_pr_curve_counts_equal_sklearn(kind):
    rng = np.random.default_rng(2)
    targets = rng.random(300) < 0.1
    if kind == "probabilities":
        scores = rng.random(300)
    else:  # negative raw logits with many ties
        scores = rng.integers(-40, -10, 300).astype(float)
    curve = visualize.pr_curve_counts(torch.tensor(targets, dtype=torch.float32), scores,
                                      max_points=10_000)
    precision, recall, _ = precision_recall_curve(targets, scores, drop_intermediate=False)
    # sklearn appends the point (precision 1, recall 0) past the highest threshold.
    np.testing.assert_allclose(curve["precision"], precision[:-1])
    np.testing.assert_allclose(curve["recall"], recall[:-1])
    np.testing.assert_array_equal(curve["true_positive_counts"] + curve["false_negative_counts"],
                                  targets.sum())
    np.testing.assert_array_equal(curve["false_positive_counts"] + curve["true_negative_counts"],
                                  (~targets).sum())


def test_pr_curve_counts_subsampled_keeps_both_ends():
    rng = np.random.default_rng(3)
    targets, scores = rng.random(1000) < 0.3, rng.random(1000)
    full = visualize.pr_curve_counts(targets, scores, max_points=10_000)
    short = visualize.pr_curve_counts(targets, scores)
    assert len(full["recall"]) == 1000 and len(short["recall"]) == visualize.MAX_PR_POINTS
    assert short["recall"][0] == 1.0 and short["precision"][0] == pytest.approx(targets.mean())
    assert short["precision"][-1] == full["precision"][-1]
    assert set(short["recall"]) <= set(full["recall"])


def test_log_evaluation_figures_writes_images_pr_curves_and_hparams(tmp_path):
    rng = np.random.default_rng(4)
    targets = torch.tensor(rng.random((60, NUM_CLASSES)) < 0.2, dtype=torch.float32)
    targets[:, 9] = 0  # tail class without positives: no PR curve
    scores = torch.softmax(torch.tensor(rng.normal(size=(60, NUM_CLASSES))), dim=1)
    hparams = {"lr": 1e-6, "epochs": 2, "model_name": "ViT-tiny", "pretrained": False,
               "loss_function": ["clip", "bal"], "captions": None}
    final = {"hparam/mAP": 0.5, "hparam/mAP_tail": 0.25}
    writer = SummaryWriter(tmp_path)
    visualize.log_evaluation_figures(writer, 3, scores, targets, _ap(), NAMES, GROUPS,
                                     hparams=hparams, final_metrics={**final, "hparam/never": None})
    writer.close()
    assert len(list(tmp_path.iterdir())) == 1  # one event file, no timestamped sub-run

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "tensors": 0,
                                                            "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert tags["images"] == ["val/per_class_ap"]
    image = events.Images("val/per_class_ap")[0]
    assert image.step == 3 and image.width > image.height > 100

    expected_curves = {f"pr_tail/{NAMES[c]}": c for c in GROUPS["tail"] if c != 9}
    assert set(events.PluginTagToContent("pr_curves")) == set(expected_curves)
    for tag, c in expected_curves.items():
        data = tensor_util.make_ndarray(events.Tensors(tag)[0].tensor_proto)
        precision, recall, _ = precision_recall_curve(targets[:, c], scores[:, c],
                                                      drop_intermediate=False)
        assert data.shape == (6, len(precision) - 1)
        np.testing.assert_allclose(data[4], precision[:-1], rtol=1e-6)  # stored as float32
        np.testing.assert_allclose(data[5], recall[:-1], rtol=1e-6)

    hparams_content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        hparams_content["_hparams_/session_start_info"]).session_start_info.hparams
    assert start["lr"].number_value == pytest.approx(1e-6)
    assert start["epochs"].number_value == 2
    assert start["model_name"].string_value == "ViT-tiny"
    assert start["loss_function"].string_value == "['clip', 'bal']"
    assert start["captions"].string_value == "None"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        hparams_content["_hparams_/experiment"]).experiment
    assert {info.name.tag for info in experiment.metric_infos} == set(final)
    assert events.Scalars("hparam/mAP_tail")[0].value == pytest.approx(0.25)


def test_log_evaluation_figures_without_hparams_writes_no_hparams(tmp_path):
    writer = SummaryWriter(tmp_path)
    scores, targets = torch.rand(10, NUM_CLASSES), torch.ones(10, NUM_CLASSES)
    visualize.log_evaluation_figures(writer, 0, scores, targets, _ap(), NAMES, GROUPS)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert events.PluginTagToContent("pr_curves")
    with pytest.raises(KeyError):
        events.PluginTagToContent("hparams")
