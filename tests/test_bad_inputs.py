"""train.py on bad inputs: each stops before training with exit code 1 and one error
paragraph (no traceback) that names the file, the line or the images; with
skip_unreadable_images, unreadable images are left out, logged and counted. The same for
the three command lines on a config file that cannot run, a device the machine lacks and a
file that is not a checkpoint; and a bug of ours keeps its traceback.

Each case is a tiny custom dataset (tests/tiny_dataset.py) with one defect, run through
train.py's ``main`` in this process (a process start-up costs more than a case); one case runs
train.py as a subprocess, as a user runs it."""
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tailclip.data.splits import SplitFormatError, read_split
from tailclip.engine.distributed import resolve_device
from tailclip.engine.logger import read_metrics
from tailclip.errors import DeviceError
from tiny_dataset import TRAIN_LABELS, split_lines, truncate, write_config, write_dataset, write_lines

REPO = Path(__file__).resolve().parents[1]
VOC_DOWNLOAD = "bash datasets/voc_mlt/download_voc_mlt.sh"


def tiny(case: Path, **options) -> tuple[Path, list[str]]:
    """The tiny dataset in ``case/data`` and train.py's arguments for it."""
    root = write_dataset(case / "data")
    return root, [f"--config={write_config(case / 'tiny.py', root, case / 'runs', **options)}"]


def missing_images(case: Path):
    root, args = tiny(case)
    removed = [f"images/train/{index:02d}.jpg" for index in range(12)]
    for path in removed:
        (root / path).unlink()
    first_ten = "".join(f"\n  {root / path}" for path in removed[:10])
    message = (f"12 of 24 images listed in the splits are missing under {root}; the first 10:{first_ten}\n"
               "To get them: check the option image_root")
    return args, [message], [str(root / removed[10])]


def voc_args(case: Path) -> list[str]:
    # The published config, as run before any download: the check must come before the
    # ViT-B/16 weights are loaded (or downloaded).
    return ["--config=configs/voc_mlt_vitb16.py", "--set", f"data_root={case}",
            "--set", f"run_dir={case / 'runs'}", "--set", "device=cpu"]


def voc_not_downloaded(case: Path):
    folder = case / "voc_mlt"
    return voc_args(case), [f"dataset 'voc_mlt': missing {folder / 'voc_lt_train.txt'}, ",
                            f"To get them: {VOC_DOWNLOAD}"], []


def voc_images_not_downloaded(case: Path):
    folder = case / "voc_mlt"
    folder.mkdir()
    paths = [f"VOCdevkit/VOC2012/JPEGImages/2008_{index:06d}.jpg" for index in range(14)]
    write_lines(folder / "voc_lt_train.txt", [f"{path} {index % 2}" for index, path in enumerate(paths[:12])])
    write_lines(folder / "voc_lt_test.txt", [f"{path} 0" for path in paths[12:]])
    write_lines(folder / "voc_labels.txt", ["aeroplane 0", "bicycle 1"])
    start = f"14 of 14 images listed in the splits are missing under {folder}; the first 10:\n  {folder / paths[0]}\n"
    end = f"\n  {folder / paths[9]}\nTo get them: {VOC_DOWNLOAD}"
    return voc_args(case), [start, end], [paths[10]]


def truncated_jpeg(case: Path, image_cache: bool):
    # Without the cache, the image is met when the epoch reaches it: a shuffle of all images.
    root, args = tiny(case, image_cache=image_cache, use_sample_weights=False)
    truncate(root / "images/train/05.jpg")
    return args, [f"cannot read image {root / 'images/train/05.jpg'}", "truncated"], []


def label_out_of_range(case: Path):
    root, args = tiny(case)
    lines = split_lines("train", TRAIN_LABELS)
    lines[2] += " 9"
    write_lines(root / "train.txt", lines)
    return args, [f"{root / 'train.txt'}:3: label 9 is out of range"], []


def empty_split(case: Path):
    root, args = tiny(case)
    (root / "test.txt").write_text("")
    return args, [f"{root / 'test.txt'}: file is empty"], []


def class_without_training_image(case: Path):
    root, args = tiny(case)
    write_lines(root / "train.txt", split_lines("train", [[label for label in labels if label != 2] or [0]
                                                          for labels in TRAIN_LABELS]))
    return args, [f"{root / 'train.txt'}: classes with no training image: [2]",
                  f"Without images: 2 'red car' (class names from {root / 'classes.txt'})"], []


def unknown_class(case: Path):
    # The class-name file lists 3 classes, the split files use 4: class 3 is unknown.
    root, args = tiny(case)
    write_lines(root / "classes.txt", ["cat 0", "dog 1", "red car 2"])
    first = next(number for number, labels in enumerate(TRAIN_LABELS, start=1) if 3 in labels)
    message = (f"{root / 'train.txt'}:{first}: label 3 is out of range: unknown class "
               f"({root / 'classes.txt'} defines 3 classes, 0 to 2)")
    return args, [message], []


def class_name_too_long(case: Path):
    root, args = tiny(case)
    write_lines(root / "classes.txt", ["cat" + " very" * 80 + " long 0", "dog 1", "red car 2", "tree 3"])
    return args, ["more than the context length 77", "'a photo of a cat very very"], []


def cache_folder_not_writable(case: Path):
    root, args = tiny(case)
    (root / "cache").write_text("a file where the image cache's folder belongs\n")
    return args, [f"cannot write the image cache {root / 'cache'}/train_",
                  "make that folder writable, or set image_cache = False"], []


FAILURES = {
    "missing_images": missing_images,
    "voc_not_downloaded": voc_not_downloaded,
    "voc_images_not_downloaded": voc_images_not_downloaded,
    "truncated_jpeg_cached": lambda case: truncated_jpeg(case, image_cache=True),
    "truncated_jpeg_uncached": lambda case: truncated_jpeg(case, image_cache=False),
    "label_out_of_range": label_out_of_range,
    "empty_split": empty_split,
    "class_without_training_image": class_without_training_image,
    "unknown_class": unknown_class,
    "cache_folder_not_writable": cache_folder_not_writable,
    "class_name_too_long": class_name_too_long,
}


@pytest.fixture(scope="module")
def train_main():
    """``train.py``'s ``main(argv) -> exit code``, run in this process."""
    return runpy.run_path(str(REPO / "train.py"))["main"]


def check_message(stderr: str, expected, unexpected) -> None:
    """One error paragraph, after any progress bar, without a traceback."""
    assert "Traceback" not in stderr
    message = stderr[stderr.index("error: "):]
    assert message.count("error: ") == 1
    for text in expected:
        assert text in message
    for text in unexpected:
        assert text not in message


@pytest.mark.parametrize("case", FAILURES)
def test_bad_input_stops_with_a_message(train_main, case, tmp_path, capsys):
    args, expected, unexpected = FAILURES[case](tmp_path)
    assert train_main(args) == 1
    captured = capsys.readouterr()
    check_message(captured.err, expected, unexpected)
    if case not in ("truncated_jpeg_uncached", "cache_folder_not_writable"):  # met after the model is built
        assert "training " not in captured.out  # stopped before the model was built
    assert not list(tmp_path.glob("runs/*/*.pt"))


def test_unreadable_images_are_skipped_and_counted(train_main, tmp_path, capsys, caplog):
    # One unreadable training image and one test image; no sample weights, so that the
    # epoch visits every training image once.
    root, args = tiny(tmp_path, skip_unreadable_images=True, use_sample_weights=False)
    skipped = ["images/train/05.jpg", "images/test/03.jpg"]
    for path in skipped:
        truncate(root / path)
    assert train_main(args) == 0
    for path in skipped:
        assert caplog.text.count(f"skipping unreadable image: cannot read image {root / path}") == 1
    assert "unreadable images left out: 1 train, 1 test" in capsys.readouterr().out
    [_, record] = read_metrics(tmp_path / "runs" / "tiny")  # epoch 0 (before training), epoch 1
    assert (record["data/unreadable_train_images"], record["data/unreadable_test_images"]) == (1, 1)


def test_test_py_names_an_unreadable_test_image(tmp_path, capsys):
    # test.py reads the test split as train.py does: a truncated image is a message naming
    # it and exit code 1, not a traceback.
    root, args = tiny(tmp_path)
    truncate(root / "images/test/03.jpg")
    test_main = runpy.run_path(str(REPO / "test.py"))["main"]
    assert test_main([*args, "--zeroshot=True"]) == 1
    check_message(capsys.readouterr().err, [f"cannot read image {root / 'images/test/03.jpg'}"], [])


BROKEN_CONFIGS = {  # config text, its line at fault, the message after "file:line: "
    "syntax_error": ("class CFG:\n    lr = (1e-3\n    epochs = 2\n", 2, "SyntaxError: '(' was never closed"),
    "import_error": ("import tailclip.no_such_module\n\nclass CFG:\n    lr = 1e-3\n", 1,
                     "ModuleNotFoundError: No module named 'tailclip.no_such_module'"),
    "exception": ("class CFG:\n    lr = 1e-3\n    epochs = int('two')\n", 3,
                  "ValueError: invalid literal for int() with base 10: 'two'"),
}


@pytest.mark.parametrize("case", BROKEN_CONFIGS)
@pytest.mark.parametrize("script", ["train.py", "test.py"])
def test_config_that_cannot_run_is_one_line_naming_file_and_line(script, case, tmp_path, capsys):
    text, line, message = BROKEN_CONFIGS[case]
    config = tmp_path / "broken.py"
    config.write_text(text)
    assert runpy.run_path(str(REPO / script))["main"]([f"--config={config}"]) == 1
    stderr = capsys.readouterr().err
    check_message(stderr, [f"error: {config}:{line}: {message}"], [])
    assert stderr.count("\n") == 1


def test_config_syntax_error_as_a_user_runs_it(tmp_path):
    # The one process-level check of the command lines' error boundary (exit code, one line,
    # no traceback); every other bad input is checked through main() in this process.
    config = tmp_path / "broken.py"
    config.write_text(BROKEN_CONFIGS["syntax_error"][0])
    result = subprocess.run([sys.executable, "train.py", f"--config={config}"], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert result.stderr == f"error: {config}:2: SyntaxError: '(' was never closed\n"


# A device this machine does not have: without CUDA, any GPU; with it, one past the last.
MISSING_DEVICES = ([f"cuda:{torch.cuda.device_count()}"] if torch.cuda.is_available()
                   else ["cuda", "cuda:1"])


@pytest.mark.parametrize("device", MISSING_DEVICES)
def test_missing_device_is_one_line_in_every_command_line(device, tmp_path, capsys):
    root, args = tiny(tmp_path)
    expected = f"device = {device!r} but this machine has "
    runs = {"train.py": [*args, "--set", f"device={device}"],
            "test.py": [*args, "--set", f"device={device}", "--zeroshot"],
            # The device is checked before the checkpoint is read.
            "predict.py": ["--checkpoint=any.pt", f"--device={device}", str(root / "images")]}
    for script, argv in runs.items():
        assert runpy.run_path(str(REPO / script))["main"](argv) == 1, script
        stderr = capsys.readouterr().err
        check_message(stderr, [expected], [])
        assert stderr.count("\n") == 1, script
        # Each says how to pick the CPU in its own syntax: a config option, or a flag.
        hint = "use --device cpu" if script == "predict.py" else "use device = 'cpu'"
        assert hint in stderr or torch.cuda.is_available(), script
    assert not (tmp_path / "runs").exists()


def test_resolve_device_names_the_gpus_there_are(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match=re.escape("device = 'cuda:1' but this machine has 1 GPU(s), "
                                                    "cuda:0 to cuda:0")):
        resolve_device("cuda:1")


def test_predict_checks_its_device_as_the_config_does(capsys):
    predict = runpy.run_path(str(REPO / "predict.py"))
    with pytest.raises(SystemExit) as stop:
        predict["parse_args"](["--checkpoint=x.pt", "--device=gpu", "photo.jpg"])
    assert stop.value.code == 2
    assert "--device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'" in capsys.readouterr().err


def non_checkpoints(folder: Path) -> list[Path]:
    """Files that are not TailCLIP checkpoints: text, a pickled module (torch advises
    weights_only=False for it), a plain state dict (a CLIP weights file, say)."""
    folder.mkdir()
    text, module, state_dict = folder / "notes.pt", folder / "module.pt", folder / "weights.pt"
    text.write_text("not a checkpoint\n")
    torch.save(torch.nn.Linear(2, 2), module)
    torch.save(torch.nn.Linear(2, 2).state_dict(), state_dict)
    return [text, module, state_dict]


def test_non_checkpoint_is_named_without_torch_advice(tmp_path, capsys):
    root, args = tiny(tmp_path)
    for path in non_checkpoints(tmp_path / "files"):
        for script, argv in (("test.py", [*args, f"--checkpoint={path}"]),
                             ("predict.py", [f"--checkpoint={path}", str(root / "images")])):
            assert runpy.run_path(str(REPO / script))["main"](argv) == 1, (script, path)
            stderr = capsys.readouterr().err
            check_message(stderr, [f"{path} is not a TailCLIP checkpoint"], ["weights_only", "torch.load"])
            assert stderr.count("\n") == 1


def raise_a_bug(*args, **kwargs):
    raise ValueError("a bug of ours")


@pytest.mark.parametrize("script, function", [("train.py", "tailclip.engine.setup.build_data"),
                                              ("test.py", "tailclip.engine.setup.build_data"),
                                              ("predict.py", "tailclip.tools.predict.load_checkpoint")])
def test_a_bug_keeps_its_traceback(script, function, tmp_path, monkeypatch):
    # An exception that is not a TailCLIPError reaches Python, which prints its traceback.
    root, args = tiny(tmp_path)
    argv = {"train.py": args, "test.py": [*args, "--zeroshot"],
            "predict.py": ["--checkpoint=any.pt", "--device=cpu", str(root / "images")]}[script]
    main = runpy.run_path(str(REPO / script))["main"]
    monkeypatch.setattr(function, raise_a_bug)
    with pytest.raises(ValueError, match="a bug of ours"):
        main(argv)


def test_split_file_that_cannot_be_read_is_named(tmp_path):
    with pytest.raises(SplitFormatError, match=re.escape(f"{tmp_path}: cannot be read (Is a directory)")):
        read_split(tmp_path, num_classes=2)


def test_pretrained_file_that_is_no_checkpoint_is_named_without_torch_advice(tmp_path, capsys):
    _, args = tiny(tmp_path)
    files = {"hello.pt": (b"hello\n", "text ('hello')"),
             "page.pt": (b"<!DOCTYPE html>\n<html><body>Not Found</body></html>\n", "an HTML page")}
    for name, (content, what) in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        for script, extra in (("train.py", []), ("test.py", ["--zeroshot"])):
            main = runpy.run_path(str(REPO / script))["main"]
            assert main([*args, *extra, "--set", f"pretrained={path}"]) == 1, (script, name)
            stderr = capsys.readouterr().err
            check_message(stderr, [f"{path} is not a weights file", f"it holds {what}"],
                          ["weights_only", "KeyError"])
            assert stderr.count("\n") == 1
