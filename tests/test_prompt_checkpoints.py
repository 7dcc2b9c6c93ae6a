"""Prompt-mode checkpoints: on OpenAI weights they hold only the trained parameters
and the backbone name, and load on top of the backbone rebuilt by name; on a random backbone
(pretrained = False), which no name can rebuild, they hold every weight. train.py --resume,
test.py and predict.py use both kinds.

A fixed random ViT-tiny stands in for OpenAI's weights (`clip.load_model` is replaced), so that
nothing is downloaded."""
import dataclasses
import io
import json
import runpy
from pathlib import Path

import pytest
import torch

import clip
from interrupt import ctrl_c_on_forward_call
from tailclip import factory
from tailclip.config import Config
from tailclip.engine import saved_model
from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.logger import read_metrics
from tailclip.model import TailCLIP
from tiny_dataset import CLASS_NAMES, TEST_LABELS, write_config, write_dataset

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a photo of a " + name for name in CLASS_NAMES]


@pytest.fixture
def openai_weights(monkeypatch):
    """`clip.load_model("ViT-tiny")` gives the same random weights at every call, as a download would."""
    torch.manual_seed(1234)
    weights = clip.create_model("ViT-tiny").state_dict()
    available = clip.available_models()

    def load_model(name, device="cpu", **kwargs):
        assert name == "ViT-tiny"
        model = clip.create_model(name)
        model.load_state_dict(weights)
        return model.to(device).eval()

    monkeypatch.setattr(clip, "available_models", lambda: [*available, "ViT-tiny"])
    monkeypatch.setattr(clip, "load_model", load_model)
    return weights


@pytest.fixture
def prompt_cfg(openai_weights) -> Config:
    """Prompt learning on "OpenAI's" ViT-tiny (`openai_weights`)."""
    return Config(model_name="ViT-tiny", pretrained=True, size=64, device="cpu", finetune="prompt",
                  class_specific_ctx=True)


def serialized_size(obj) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def logits(model, images) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().predict_logits(images)


def trained_prompt_model(cfg: Config):
    """A prompt model whose trained parameters moved away from their start."""
    model = factory.build_model(cfg, PROMPTS)
    with torch.no_grad():
        model.prompt_learner.context.add_(torch.randn_like(model.prompt_learner.context))
        model.clip_model.logit_scale.add_(0.5)
    return model


def test_pretrained_backbone_saves_the_trained_parameters_only(prompt_cfg):
    model = trained_prompt_model(prompt_cfg)
    entry = saved_model.model_state(model, prompt_cfg)
    assert entry["model_format"] == "trainable" and entry["model"]["backbone"] == "ViT-tiny"
    assert set(entry["model"]["parameters"]) == {"prompt_learner.context", "clip_model.logit_scale"}
    # A few KB instead of the whole tiny CLIP (its 49408-token embedding alone is 12.6 MB).
    assert serialized_size(entry) < 100_000
    assert serialized_size(model.state_dict()) > 10_000_000

    images = torch.randn(3, 3, 64, 64)
    rebuilt = saved_model.trained_model(entry, prompt_cfg, PROMPTS, "prompts.pt")
    assert torch.equal(logits(rebuilt, images), logits(model, images))
    assert not torch.equal(logits(factory.build_model(prompt_cfg, PROMPTS), images), logits(model, images))

    with pytest.raises(ValueError, match="prompts.pt: the weights do not fit.*holds prompts"):
        saved_model.load_model_state(factory.build_model(dataclasses.replace(prompt_cfg, finetune="full"), PROMPTS),
                                entry, "prompts.pt")


def test_random_backbone_saves_every_weight(prompt_cfg):
    cfg = dataclasses.replace(prompt_cfg, pretrained=False)
    assert not saved_model.saves_trained_parameters_only(cfg)
    assert not saved_model.saves_trained_parameters_only(dataclasses.replace(prompt_cfg, finetune="full"))
    torch.manual_seed(0)
    model = trained_prompt_model(cfg)
    entry = saved_model.model_state(model, cfg)
    assert entry["model_format"] == "state_dict"
    assert entry["model"].keys() == model.state_dict().keys()
    torch.manual_seed(1)  # another random backbone: every weight must come from the checkpoint
    rebuilt = saved_model.trained_model(entry, cfg, PROMPTS, "full.pt")
    images = torch.randn(3, 3, 64, 64)
    assert torch.equal(logits(rebuilt, images), logits(model, images))


@pytest.mark.filterwarnings("ignore:classes .* have no positive image")  # test.py's subsets of 8 images
def test_prompt_run_with_resume_test_and_predict(openai_weights, tmp_path, monkeypatch, capsys):
    root = write_dataset(tmp_path / "data")
    config = write_config(tmp_path / "prompts.py", root, tmp_path / "runs", pretrained=True, epochs=2,
                          finetune="prompt", class_specific_ctx=True, lr=1e-2)
    run_dir = tmp_path / "runs" / "prompts"
    train_main = runpy.run_path(str(REPO / "train.py"))["main"]

    # Ctrl-C in step 1 of epoch 2 (2 steps per epoch): the newest checkpoint is saved there.
    forward = ctrl_c_on_forward_call(monkeypatch, 3)
    assert train_main([f"--config={config}"]) == 130
    monkeypatch.setattr(TailCLIP, "forward", forward)
    for name in ("best_valid_mAP.pt", "best_valid_mAP_tail.pt", "newest_train_checkpoint.pt"):
        assert (run_dir / name).stat().st_size < 1_000_000
        checkpoint = load_checkpoint(run_dir / name)
        assert checkpoint["model_format"] == "trainable" and checkpoint["backbone"] == "ViT-tiny"
    stopped = load_checkpoint(run_dir / "newest_train_checkpoint.pt")
    assert (stopped["state"]["epoch"], stopped["state"]["step_in_epoch"]) == (1, 1)

    # --resume loads the prompts on top of the rebuilt backbone and finishes the run.
    assert train_main([f"--config={config}", "--resume"]) == 0
    start, *records = read_metrics(run_dir)
    assert [record["epoch"] for record in (start, *records)] == [0, 1, 2]
    finished = load_checkpoint(run_dir / "newest_train_checkpoint.pt")["model"]["parameters"]
    assert not torch.equal(finished["prompt_learner.context"],
                           stopped["model"]["parameters"]["prompt_learner.context"])

    # test.py rebuilds the backbone by name and gets the training's evaluation back.
    assert runpy.run_path(str(REPO / "test.py"))["main"]([f"--config={config}"]) == 0
    report = json.loads((run_dir / "test_best_valid_mAP.json").read_text())
    best = max(records, key=lambda record: record["val/mAP"])
    for key in ("mAP", "AUROC"):
        assert report["metrics"][key] == pytest.approx(best[f"val/{key}"], abs=1e-9)

    predict_main = runpy.run_path(str(REPO / "predict.py"))["main"]
    capsys.readouterr()
    assert predict_main([f"--checkpoint={run_dir / 'best_valid_mAP.pt'}", str(root / "images" / "test"),
                         "--workers", "0"]) == 0
    assert capsys.readouterr().out.count(".jpg: ") == len(TEST_LABELS)
