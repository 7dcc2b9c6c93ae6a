"""predict.py and tailclip.tools.predict: images or folders in, top classes out, bad files reported.

The end-to-end tests train a real run (train.py, a tiny custom dataset, 1 epoch), delete its
data, and predict from the checkpoint alone; the scores are checked against a forward pass
written here from the ``clip`` package and PIL/numpy preprocessing, independent of
tailclip's model, transform and predict code.
"""
import csv
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import clip
from tailclip.tools import predict

CLASSES = ["red", "green", "blue"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _image(colour, seed: int, size=(80, 60)) -> Image.Image:
    """A noisy image of one colour (non-square, so the resize must not keep the aspect)."""
    noise = np.random.default_rng(seed).integers(-25, 25, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))


def _write_folder_to_predict(folder, good_image_source):
    """A good JPEG, a PNG in a sub-folder (upper-case extension), a text file, a text file
    named .jpg, and a truncated JPEG."""
    (folder / "sub").mkdir(parents=True)
    shutil.copy(good_image_source, folder / "good.jpg")
    _image(COLOURS["blue"], 99).save(folder / "sub" / "other.PNG")
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "fake.jpg").write_text("this is text, not a JPEG\n")
    jpeg = (folder / "good.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 2])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, run_script):
    """Checkpoint of a real 1-epoch train.py run (ViT-tiny, 3 classes, clip + bce: a model
    whose sigmoid is a probability, for --threshold); its data is deleted."""
    root = tmp_path_factory.mktemp("predict_run")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    train_lines, test_lines = [], []
    for c, name in enumerate(CLASSES):
        for i in range(4):
            _image(COLOURS[name], 10 * c + i).save(data / "images" / f"{name}{i}.jpg")
            (train_lines if i < 3 else test_lines).append(f"{name}{i}.jpg {c}")
    (data / "train.txt").write_text("\n".join(train_lines) + "\n")
    (data / "test.txt").write_text("\n".join(test_lines) + "\n")
    (data / "labels.txt").write_text("".join(f"{name} {c}\n" for c, name in enumerate(CLASSES)))
    config = root / "tiny.py"
    config.write_text(f"""
class CFG:
    dataset = "custom"
    train_list = {str(data / "train.txt")!r}
    test_list = {str(data / "test.txt")!r}
    class_names = {str(data / "labels.txt")!r}
    image_root = {str(data / "images")!r}
    model_name = "ViT-tiny"
    pretrained = False
    loss_function = ["clip", "bce"]
    size = 64
    lr = 5e-4
    batch_size = 4
    eval_batch_size = 8
    epochs = 1
    num_workers = 0
    image_cache = False
    device = "cpu"
    run_dir = {str(root / "runs")!r}
""")
    done = run_script("train.py", f"--config={config}")
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = root / "runs" / "tiny" / "best_valid_mAP.pt"
    assert checkpoint.is_file()
    good_image = root / "good_source.jpg"
    shutil.copy(data / "images" / "red3.jpg", good_image)
    shutil.rmtree(data)  # the checkpoint alone must be enough
    return checkpoint, good_image


def _reference_logits(checkpoint_path, image_path) -> np.ndarray:
    """Class logits by hand: clip.CLIP with the checkpoint's weights, PIL bilinear
    resize to 64x64, ImageNet normalisation, cosine similarity times the logit scale."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    cfg = checkpoint["config"]
    assert cfg["score"] == "softmax" and cfg["normalize"] == "imagenet" and cfg["size"] == 64
    model = clip.create_model(cfg["model_name"]).eval()
    model.load_state_dict({key.removeprefix("clip_model."): value
                           for key, value in checkpoint["model"].items()})
    with Image.open(image_path) as image:
        pixels = np.asarray(image.convert("RGB").resize((64, 64), Image.BILINEAR)) / 255.0
    pixels = (pixels - IMAGENET_MEAN) / IMAGENET_STD
    images = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)[None]
    tokens = clip.tokenize(checkpoint["label_prompts"], context_length=cfg["max_length"])
    with torch.no_grad():
        image_emb = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        text_emb = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp() * image_emb @ text_emb.T
    return logits[0].numpy()


def _reference_scores(checkpoint_path, image_path) -> np.ndarray:
    """The softmax class scores (the config's score kind)."""
    return torch.from_numpy(_reference_logits(checkpoint_path, image_path)).softmax(-1).numpy()


@pytest.fixture(scope="module")
def predict_cli(repo_root):
    """The predict.py script as a module, to call ``main(argv)`` in this process."""
    spec = importlib.util.spec_from_file_location("predict_cli", repo_root / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_predict_cli_csv_on_a_trained_checkpoint(trained_run, tmp_path, run_script):
    checkpoint, good_image = trained_run
    folder = tmp_path / "inbox"
    _write_folder_to_predict(folder, good_image)
    output = tmp_path / "out" / "results.csv"
    done = run_script("predict.py", f"--checkpoint={checkpoint}", folder, "--top-k", 2,
                        "--threshold", 0.2, "--output", output)
    assert done.returncode == 0, done.stderr

    # The two good images are predicted, in sorted order, with top-2 classes and the threshold.
    lines = done.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(folder / "good.jpg"),
                                                       str(folder / "sub" / "other.PNG")]
    assert all(line.split("  [")[0].count(", ") == 1 and "  [sigmoid >= 0.2: " in line for line in lines)
    # The three bad files are reported at the end, each with its reason.
    report = done.stderr[done.stderr.index("3 file(s) could not be read:"):]
    assert f"{folder / 'broken.jpg'}: cannot read image: image file is truncated" in report
    assert f"{folder / 'fake.jpg'}: cannot read image: cannot identify image file" in report
    assert f"{folder / 'notes.txt'}: not an image file (extension '.txt')" in report

    expected = _reference_scores(checkpoint, good_image)
    with open(output, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "error", "class_1", "score_1", "class_2", "score_2",
                             "sigmoid_above_threshold"]
    # Files in the order found (sorted), then those skipped for their extension.
    assert [row["path"] for row in rows] == [str(folder / name) for name in
                                             ("broken.jpg", "fake.jpg", "good.jpg",
                                              "sub/other.PNG", "notes.txt")]
    good = rows[2]
    order = np.argsort(-expected)
    assert good["error"] == ""
    assert [good["class_1"], good["class_2"]] == [CLASSES[order[0]], CLASSES[order[1]]]
    np.testing.assert_allclose([float(good["score_1"]), float(good["score_2"])],
                               expected[order[:2]], rtol=1e-4)
    # The threshold selects by the sigmoid of the class logits, not by the softmax scores.
    probabilities = 1 / (1 + np.exp(-_reference_logits(checkpoint, good_image)))
    assert good["sigmoid_above_threshold"] == ";".join(
        CLASSES[c] for c in np.argsort(-probabilities) if probabilities[c] >= 0.2)
    assert rows[0]["error"].startswith("cannot read image: image file is truncated")
    assert rows[0]["class_1"] == "" and rows[0]["sigmoid_above_threshold"] == ""


def test_predict_cli_json_on_a_trained_checkpoint(trained_run, tmp_path, predict_cli, capsys):
    checkpoint, good_image = trained_run
    folder = tmp_path / "inbox"
    _write_folder_to_predict(folder, good_image)
    output = tmp_path / "results.json"
    assert predict_cli.main([f"--checkpoint={checkpoint}", str(folder / "good.jpg"),
                             str(folder / "broken.jpg"), str(tmp_path / "missing.jpg"),
                             "--output", str(output), "--workers", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(f"{folder / 'good.jpg'}: ")
    document = json.loads(output.read_text())
    assert document["classes"] == CLASSES and document["top_k"] == 3
    assert document["score"] == "softmax" and document["backbone"] == "ViT-tiny"
    assert document["loss_function"] == ["clip", "bce"]
    assert document["threshold"] is None
    [prediction] = document["predictions"]
    assert prediction["path"] == str(folder / "good.jpg") and "above_threshold" not in prediction
    expected = _reference_scores(checkpoint, good_image)
    ranking = [CLASSES[c] for c in np.argsort(-expected)]
    assert [entry["class"] for entry in prediction["top_k"]] == ranking
    np.testing.assert_allclose([entry["score"] for entry in prediction["top_k"]],
                               np.sort(expected)[::-1], rtol=1e-4)
    errors = {entry["path"]: entry["error"] for entry in document["unreadable"]}
    assert set(errors) == {str(tmp_path / "missing.jpg"), str(folder / "broken.jpg")}
    assert errors[str(tmp_path / "missing.jpg")] == "no such file or folder"
    assert "truncated" in errors[str(folder / "broken.jpg")]


def test_an_output_through_a_file_is_one_line(trained_run, tmp_path, predict_cli, capsys):
    checkpoint, good_image = trained_run
    (tmp_path / "afile").write_text("")
    output = tmp_path / "afile" / "results.csv"
    assert predict_cli.main([f"--checkpoint={checkpoint}", str(good_image), "--output", str(output),
                             "--workers", "0", "--device", "cpu"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"predict.py: error: cannot write {output.parent}: it is a file, not a folder; use another folder")


def test_exit_code_1_when_no_image_can_be_read(trained_run, tmp_path, predict_cli, capsys):
    checkpoint, _ = trained_run
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert predict_cli.main([f"--checkpoint={checkpoint}", str(tmp_path), "--workers", "0"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "1 file(s) could not be read" in captured.err
    assert "no image could be read" in captured.err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict_cli.main([f"--checkpoint={checkpoint}", str(empty), "--workers", "0"]) == 1
    assert "no image found" in capsys.readouterr().err


def test_bad_checkpoints_exit_1_and_bad_arguments_exit_2(tmp_path, predict_cli, capsys):
    not_a_checkpoint = tmp_path / "weights.pt"
    not_a_checkpoint.write_text("not a checkpoint\n")
    assert predict_cli.main([f"--checkpoint={not_a_checkpoint}", str(tmp_path)]) == 1
    assert f"{not_a_checkpoint} is not a TailCLIP checkpoint" in capsys.readouterr().err
    assert predict_cli.main([f"--checkpoint={tmp_path / 'nope.pt'}", str(tmp_path)]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    for bad in (["--output", "results.txt"], ["--top-k", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            predict_cli.main([f"--checkpoint={not_a_checkpoint}", str(tmp_path), *bad])
        assert exit_info.value.code == 2
    assert "use a file name ending in .csv or .json" in capsys.readouterr().err


def test_find_images_searches_folders_recursively(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.JPG", "a/deep/y.jpeg", "a/deep/z.webp", "a/readme.md", "b.png"):
        (tmp_path / name).write_bytes(b"")
    images, not_read = predict.find_images([tmp_path / "a", tmp_path / "b.png", tmp_path / "gone"])
    assert images == [tmp_path / "a/deep/y.jpeg", tmp_path / "a/deep/z.webp", tmp_path / "a/x.JPG",
                      tmp_path / "b.png"]
    assert [(r.path, r.error) for r in not_read] == [
        (str(tmp_path / "a/readme.md"), "not an image file (extension '.md')"),
        (str(tmp_path / "gone"), "no such file or folder")]


class _MeanColourPredictor:
    """Stands in for a model: the 'score' of each class is the image's mean of one channel."""

    def __init__(self):
        self.transform = lambda image: torch.tensor(np.asarray(image), dtype=torch.float32).mean(
            (0, 1))
        self.batches = []

    def __call__(self, images):
        self.batches.append(len(images))
        return images / 255, images / 255


def test_predict_files_batches_and_keeps_order_past_bad_files(tmp_path):
    paths = []
    for i, colour in enumerate([(255, 0, 0), None, (0, 255, 0), (0, 0, 255), None]):
        path = tmp_path / f"{i}.png"
        if colour is None:
            path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
        else:
            Image.new("RGB", (8, 8), colour).save(path)
        paths.append(path)
    predictor = _MeanColourPredictor()
    results = list(predict.predict_files(predictor, paths, batch_size=2))
    assert [r.path for r in results] == [str(p) for p in paths]
    assert [r.error is None for r in results] == [True, False, True, True, False]
    assert [int(r.scores.argmax()) for r in results if r.scores is not None] == [0, 1, 2]
    assert predictor.batches == [1, 2]  # the third batch held only a broken file


def test_write_results_csv_and_json(tmp_path):
    results = [predict.Result("a.jpg", scores=torch.tensor([0.1, 0.6, 0.3]),
                              decision_values=torch.tensor([0.9, 0.2, 0.5])),
               predict.Result("b.jpg", error="cannot read image: boom")]
    names = ["cat", "dog", "bird"]
    csv_path = predict.write_results(tmp_path / "r.csv", results, names, top_k=5, threshold=0.3)
    assert csv_path.read_text().splitlines() == [
        "path,error,class_1,score_1,class_2,score_2,class_3,score_3,sigmoid_above_threshold",
        "a.jpg,,dog,0.6,bird,0.3,cat,0.1,cat;bird",
        "b.jpg,cannot read image: boom,,,,,,,"]
    json_path = predict.write_results(tmp_path / "r.json", results, names, top_k=1,
                                      metadata={"score": "softmax"})
    document = json.loads(json_path.read_text())
    assert document == {
        "score": "softmax", "top_k": 1, "threshold": None,
        "threshold_on": "sigmoid of the class logits", "classes": names,
        "predictions": [{"path": "a.jpg",
                         "top_k": [{"class": "dog", "score": pytest.approx(0.6)}]}],
        "unreadable": [{"path": "b.jpg", "error": "cannot read image: boom"}]}
    with pytest.raises(ValueError, match="r.txt: unknown format"):
        predict.write_results(tmp_path / "r.txt", results, names, top_k=1)


def test_threshold_on_softmax_scores_can_select_every_class(tmp_path):
    # Four equally likely classes: softmax gives each 0.25, so no threshold above 0.25 could
    # select more than one of them; their sigmoid probabilities are all sigmoid(3) = 0.953.
    logits = torch.tensor([3.0, 3.0, 3.0, 3.0, -4.0])
    result = predict.Result("a.jpg", scores=logits.softmax(-1), decision_values=logits.sigmoid())
    names = ["cat", "dog", "bird", "fish", "car"]
    top, above = predict.ranked_classes(result, names, top_k=2, threshold=0.5)
    assert [name for name, _ in top] == ["cat", "dog"] and top[0][1] == pytest.approx(0.2499, abs=1e-4)
    assert above == [(name, pytest.approx(0.9526, abs=1e-4)) for name in names[:4]]
    document = json.loads(predict.write_results(tmp_path / "r.json", [result], names, top_k=1,
                                                threshold=0.5).read_text())
    assert document["threshold_on"] == "sigmoid of the class logits"
    assert [entry["class"] for entry in document["predictions"][0]["above_threshold"]] == names[:4]


def test_predict_help_says_what_the_threshold_and_batch_size_mean(predict_cli, capsys):
    with pytest.raises(SystemExit):
        predict_cli.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--threshold THRESHOLD also list every class whose probability (the sigmoid of its class logit" in text
    assert "--batch-size BATCH_SIZE images scored at a time" in text
