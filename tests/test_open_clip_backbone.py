"""open_clip's models as backbones (``model_name = "open_clip:<name>"``), on tiny random models
registered into open_clip's registry from ``tests/open_clip_configs`` (no download).

Each family that runs as open_clip's own model (a SigLIP-style sigmoid model, with open_clip's
and with timm's image tower; EVA02; CoCa) gives, through TailCLIP, the embeddings open_clip's
model gives for the same weights and texts; a standard CLIP is built by our clip package.
"""
import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import clip
from tailclip.config import Config, ConfigError, load_config
from tailclip.errors import USER_ERRORS, TailCLIPError
from tailclip.factory import build_clip, build_model, build_objective
from tailclip.open_clip_backbone import OpenCLIPBackbone, open_clip_tokenizer

open_clip = pytest.importorskip("open_clip")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "open_clip_configs"
PROMPTS = ["a photo of a cat", "a photo of a red car", "a photo of a dog, tree, cat"]

if "tailclip-test-sigmoid" not in open_clip.list_models():
    open_clip.add_model_config(CONFIGS)


def native(name):
    config = open_clip.get_model_config(name)
    return config["vision_cfg"]["image_size"], config["text_cfg"]["context_length"]


def reference_checkpoint(name, path, seed=0):
    """An open_clip model with seeded random weights (and a logit scale and bias away from
    their initial values), saved as a plain state dict at ``path``."""
    torch.manual_seed(seed)
    model = open_clip.create_model(name).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
        if getattr(model, "logit_bias", None) is not None:
            model.logit_bias.fill_(-3.0)
    torch.save(model.state_dict(), path)
    return model


def config(name, **options):
    size, context = native(name)
    return Config(**{"model_name": f"open_clip:{name}", "pretrained": False, "size": size,
                     "max_length": context, "device": "cpu", **options})


def training_step(cfg, model, images, captions, targets) -> dict:
    """The model's outputs and the loss terms of its objective, as a training step has them."""
    outputs = model(images, captions)
    return {**outputs, **build_objective(cfg, model)(**outputs, targets=targets)}


@pytest.mark.parametrize("name, has_bias", [
    ("tailclip-test-sigmoid", True), ("tailclip-test-sigmoid-timm", True),
    ("tailclip-test-eva", False), ("tailclip-test-coca", False)])
def test_family_gives_open_clips_embeddings(tmp_path, name, has_bias):
    if "eva" in name:
        pytest.importorskip("timm.models.eva")
    reference = reference_checkpoint(name, tmp_path / "weights.pt")
    cfg = config(name, pretrained=str(tmp_path / "weights.pt"))
    model = build_model(cfg, PROMPTS).eval()
    assert isinstance(model.clip_model, OpenCLIPBackbone)

    size = native(name)[0]
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    reference_tokens = open_clip.get_tokenizer(name)(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_images(images),
                                   F.normalize(reference.encode_image(images), dim=-1), rtol=1e-4, atol=1e-5)
        # The class prompts are open_clip's token ids, padding kept.
        assert torch.equal(model.label_tokens, reference_tokens)
        torch.testing.assert_close(model.encode_labels(),
                                   F.normalize(reference.encode_text(reference_tokens), dim=-1),
                                   rtol=1e-4, atol=1e-5)
    assert model.clip_model.logit_scale.item() == pytest.approx(2.5)
    assert (model.logit_bias is not None) == has_bias
    assert build_objective(cfg, model).terms["clip"].kind == ("sigmoid" if has_bias else "softmax")
    if has_bias:
        assert model.logit_bias.item() == pytest.approx(-3.0)


def test_standard_clip_is_built_by_our_clip_package(tmp_path):
    """A plain CLIP config runs in our clip.CLIP with open_clip's weights: same embeddings,
    CLIP's tokenizer with the padding trimmed, and the prompt modes available."""
    name = "tailclip-test-standard"
    reference = reference_checkpoint(name, tmp_path / "weights.pt")
    model = build_model(config(name, pretrained=str(tmp_path / "weights.pt")), PROMPTS).eval()
    assert isinstance(model.clip_model, clip.CLIP) and model.trims_text_padding
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_images(images),
                                   F.normalize(reference.encode_image(images), dim=-1), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.encode_labels(),
                                   F.normalize(reference.encode_text(open_clip.get_tokenizer(name)(PROMPTS)), dim=-1),
                                   rtol=1e-4, atol=1e-5)
    prompt_model = build_model(config(name, pretrained=str(tmp_path / "weights.pt"), finetune="prompt+visual"), PROMPTS)
    assert prompt_model.visual_prompts is not None


@pytest.mark.parametrize("name", ["tailclip-test-sigmoid", "tailclip-test-coca"])
def test_grad_checkpointing_recomputes_open_clips_blocks_with_the_same_loss_and_gradients(name):
    results = []
    for grad_checkpointing in (False, True):
        torch.manual_seed(0)
        cfg = config(name, grad_checkpointing=grad_checkpointing)
        model = build_model(cfg, PROMPTS).train()
        size, context = native(name)
        images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        captions = open_clip.get_tokenizer(name)(["a photo of a cat", "a photo of a dog"])
        blocks = [module for module in model.modules() if isinstance(module, open_clip.transformer.Transformer)]
        assert blocks and all(block.grad_checkpointing == grad_checkpointing for block in blocks)
        loss = training_step(cfg, model, images, captions, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))["loss"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss, grads), (checkpointed_loss, checkpointed_grads) = results
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=0)
    assert grads.keys() == checkpointed_grads.keys()
    for key in grads:
        torch.testing.assert_close(checkpointed_grads[key], grads[key], rtol=1e-5, atol=1e-7)


def test_sigmoid_backbone_trains_on_siglips_loss(tmp_path):
    """The contrastive term of a sigmoid model's training step is open_clip's SigLipLoss of its
    embeddings with its learned scale and bias, and gradient reaches the bias."""
    name = "tailclip-test-sigmoid"
    reference_checkpoint(name, tmp_path / "weights.pt")
    cfg = config(name, pretrained=str(tmp_path / "weights.pt"), loss_function=["clip"])
    model = build_model(cfg, PROMPTS)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    captions = open_clip.get_tokenizer(name)(["a photo of a cat", "a photo of a dog", "a photo of a tree"])
    out = training_step(cfg, model, images, captions, torch.zeros(3, 3))
    expected = open_clip.loss.SigLipLoss()(out["image_emb"], model.encode_texts(captions),
                                           model.clip_model.logit_scale.exp(), model.logit_bias)
    torch.testing.assert_close(out["loss_clip"], expected)
    out["loss"].backward()
    assert model.logit_bias.grad is not None and model.logit_bias.grad.abs().item() > 0


@pytest.mark.parametrize("options, trained", [
    ({}, True), ({"contrastive": "softmax"}, False), ({"loss_function": ["bal"]}, False)])
def test_the_logit_bias_is_trained_only_when_the_sigmoid_term_uses_it(options, trained):
    cfg = config("tailclip-test-sigmoid", **options)
    model = build_model(cfg, PROMPTS)
    build_objective(cfg, model)
    assert model.logit_bias.requires_grad == trained


@pytest.mark.parametrize("finetune", ["prompt", "prompt+visual"])
def test_prompt_modes_on_open_clips_own_model_are_a_one_line_error(finetune):
    message = f"finetune: '{finetune}' needs a backbone of our clip package"
    with pytest.raises(TailCLIPError, match=re.escape(message)) as error:
        build_model(config("tailclip-test-coca", finetune=finetune), PROMPTS)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("options, message", [
    ({"size": 64}, "open_clip:tailclip-test-sigmoid takes 32-pixel images, not 64"),
    ({"size": 64, "interpolate_pos_embedding": True}, "set size = 32"),
    ({"max_length": 77}, "set max_length = 16"),
])
def test_size_and_context_come_from_the_models_config(options, message):
    with pytest.raises(ValueError, match=message):
        build_clip(config("tailclip-test-sigmoid", **options))


@pytest.mark.parametrize("name", ["tailclip-test-sigmoid", "tailclip-test-standard"])
def test_a_checkpoint_of_another_architecture_is_a_one_line_error(tmp_path, name):
    reference_checkpoint("tailclip-test-coca", tmp_path / "coca.pt")
    with pytest.raises(TailCLIPError, match=re.escape(f"{tmp_path / 'coca.pt'}: the weights do not fit "
                                                      f"'open_clip:{name}': Error(s) in loading")) as error:
        build_clip(config(name, pretrained=str(tmp_path / "coca.pt")))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["tailclip-test-sigmoid", "tailclip-test-standard"])
@pytest.mark.parametrize("content, what", [(b"hello\n", "text ('hello')"),
                                           (b"<!DOCTYPE html><html><body>404</body></html>", "an HTML page")])
def test_a_file_that_is_no_checkpoint_is_a_one_line_error(tmp_path, name, content, what):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(USER_ERRORS) as error:
        build_clip(config(name, pretrained=str(path)))
    message = str(error.value)
    assert message.startswith(f"{path} is not a weights file (a PyTorch checkpoint or safetensors): "
                              f"it holds {what}")
    assert "\n" not in message and "weights_only" not in message


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(TailCLIPError, match=r"unknown open_clip model 'ViT-B-61'.*close matches: .*ViT-B-16"):
        build_clip(config("tailclip-test-sigmoid", model_name="open_clip:ViT-B-61"))


def test_unknown_tag_lists_close_matches():
    cfg = Config(model_name="open_clip:ViT-B-16", pretrained="laion2b_s34b_b88", device="cpu")
    with pytest.raises(TailCLIPError, match=r"pretrained = 'laion2b_s34b_b88' is neither a checkpoint file nor "
                                            r"a pretrained tag of 'ViT-B-16'; close matches: laion2b_s34b_b88k"):
        build_clip(cfg)


def test_true_is_for_openais_names_only():
    with pytest.raises(ConfigError, match="True means OpenAI's weights"):
        Config(model_name="open_clip:ViT-B-16", pretrained=True)


@pytest.fixture
def registered_tag(monkeypatch, tmp_path):
    """A pretrained tag "test" of the sigmoid test model, whose registry entry a test sets,
    and an empty weights cache."""
    monkeypatch.setenv("TAILCLIP_CACHE", str(tmp_path / "cache"))
    entries = {}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tailclip-test-sigmoid", {"test": entries})
    return entries


def test_offline_names_the_address_and_where_to_place_the_file(registered_tag, monkeypatch, tmp_path):
    registered_tag["hf_hub"] = "someone/tiny-sigmoid/"
    # A closed port stands in for an unreachable Hugging Face.
    monkeypatch.setattr("tailclip.open_clip_backbone.HF_HUB_URL", "http://127.0.0.1:9/{repo}/resolve/main/{filename}")
    with pytest.raises(TailCLIPError) as error:
        build_clip(config("tailclip-test-sigmoid", pretrained="test"))
    message = str(error.value)
    target = tmp_path / "cache" / "open_clip" / "someone--tiny-sigmoid" / "open_clip_pytorch_model.bin"
    assert "\n" not in message
    assert "http://127.0.0.1:9/someone/tiny-sigmoid/resolve/main/open_clip_pytorch_model.bin" in message
    assert f"place that file by hand at {target}" in message


def test_a_file_placed_by_hand_is_used_without_network(registered_tag, monkeypatch, tmp_path):
    registered_tag["url"] = "file:///nowhere/tiny-sigmoid.pt"
    (tmp_path / "cache" / "open_clip").mkdir(parents=True)
    reference = reference_checkpoint("tailclip-test-sigmoid", tmp_path / "cache" / "open_clip" / "tiny-sigmoid.pt")
    backbone = build_clip(config("tailclip-test-sigmoid", pretrained="test"))
    torch.testing.assert_close(backbone.model.state_dict(), reference.state_dict())


def test_tag_downloads_through_the_registry_into_the_cache_and_resumes(registered_tag, monkeypatch,
                                                                         http_server, tmp_path):
    registered_tag["hf_hub"] = "someone/tiny-sigmoid/"
    monkeypatch.setattr("tailclip.open_clip_backbone.HF_HUB_URL", http_server.url + "/{repo}/resolve/main/{filename}")
    served = http_server.root / "someone" / "tiny-sigmoid" / "resolve" / "main"
    served.mkdir(parents=True)
    reference = reference_checkpoint("tailclip-test-sigmoid", served / "open_clip_pytorch_model.bin")
    size = (served / "open_clip_pytorch_model.bin").stat().st_size
    http_server.cut_after = size // 3  # the first attempt is cut off
    with pytest.raises(TailCLIPError, match="could not download"):
        build_clip(config("tailclip-test-sigmoid", pretrained="test"))
    http_server.cut_after = None
    backbone = build_clip(config("tailclip-test-sigmoid", pretrained="test"))
    cached = tmp_path / "cache" / "open_clip" / "someone--tiny-sigmoid" / "open_clip_pytorch_model.bin"
    assert cached.read_bytes() == (served / "open_clip_pytorch_model.bin").read_bytes()
    assert http_server.requests[-1][1] == f"bytes={size // 3}-"  # continued, not started again
    assert http_server.body_bytes_sent == size
    torch.testing.assert_close(backbone.model.state_dict(), reference.state_dict())


def test_without_open_clip_the_library_runs_and_open_clip_names_say_how_to_install():
    """open_clip made unimportable in a fresh interpreter: the library imports, OpenAI
    backbones build and run (so nothing imports open_clip for them), and an open_clip name is
    a one-line error with the install hint."""
    script = """
import sys
sys.modules["open_clip"] = None  # import open_clip now raises ImportError
import torch
import tailclip.engine.training, tailclip.engine.evaluation, tailclip.tools.predict
from tailclip.config import Config, ConfigError, load_config
from tailclip.factory import build_model
from tailclip.errors import USER_ERRORS, TailCLIPError
model = build_model(Config(model_name="ViT-tiny", pretrained=False, size=64), ["a photo of a cat", "a photo of a dog"])
print(tuple(model.predict_logits(torch.zeros(1, 3, 64, 64)).shape))
try:
    build_model(Config(model_name="open_clip:ViT-B-16", pretrained=False), ["a photo of a cat"])
except TailCLIPError as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "(1, 2)",
        "model_name = 'open_clip:ViT-B-16' needs open_clip, which is not installed: pip install open_clip_torch"]


def test_a_hugging_face_tokenizer_without_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(TailCLIPError, match=r"the tokenizer of 'open_clip:ViT-B-16-SigLIP' needs transformers, "
                                            r"which is not installed: pip install transformers"):
        open_clip_tokenizer("open_clip:ViT-B-16-SigLIP", 64)


def test_trains_the_demo_data_and_evaluates_zero_shot_end_to_end(tmp_path, capsys):
    """train.py (1 epoch of the synthetic demo data) and test.py --zeroshot / --checkpoint on
    a sigmoid open_clip model started from a local checkpoint file."""
    reference_checkpoint("tailclip-test-sigmoid", tmp_path / "weights.pt")
    config_file = tmp_path / "open_clip_demo.py"
    options = {"model_name": "open_clip:tailclip-test-sigmoid", "pretrained": str(tmp_path / "weights.pt"),
               "size": 32, "max_length": 16, "epochs": 1, "batch_size": 128, "eval_batch_size": 256,
               "lr": 1e-4, "device": "cpu", "precision": "fp32", "num_workers": 0, "num_threads": 1,
               "run_dir": str(tmp_path / "runs")}
    config_file.write_text("class CFG:\n" + "".join(f"    {k} = {v!r}\n" for k, v in options.items()))

    assert runpy.run_path(str(REPO / "train.py"))["main"]([f"--config={config_file}"]) == 0
    trained = capsys.readouterr()
    test_main = runpy.run_path(str(REPO / "test.py"))["main"]
    assert test_main([f"--config={config_file}", "--zeroshot=True"]) == 0
    zero_shot = capsys.readouterr()
    assert test_main([f"--config={config_file}", "--checkpoint=best_valid_mAP.pt"]) == 0
    tested = capsys.readouterr()

    run = tmp_path / "runs" / "open_clip_demo"
    zero_shot_report = json.loads((run / "test_zeroshot.json").read_text())
    best_report = json.loads((run / "test_best_valid_mAP.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # The zero-shot model is the one training started from, and the checkpoint is epoch 1's.
    assert f"start {100 * zero_shot_report['metrics']['mAP']:.1f} (before training)" in trained.out + trained.err
    assert best_report["metrics"]["mAP"] == pytest.approx(metrics[-1]["val/mAP"], abs=1e-6)
    assert "error" not in zero_shot.err + tested.err


@pytest.mark.parametrize("benchmark", ["voc_mlt", "coco_mlt"])
def test_open_clip_configs_fit_their_model_and_keep_the_published_recipe(repo_root, benchmark):
    """The open_clip config of each benchmark: its tag is in open_clip's registry, its size and
    max_length are the model's (built on the meta device: no memory, no download), and every
    other option is the published ViT-B/16 config's."""
    cfg = load_config(repo_root / "configs" / f"{benchmark}_vith14_378_dfn5b.py")
    published = load_config(repo_root / "configs" / f"{benchmark}_vitb16.py")
    assert open_clip.pretrained.get_pretrained_cfg(cfg.model_name.removeprefix("open_clip:"), cfg.pretrained)
    with torch.device("meta"):
        backbone = build_clip(cfg, pretrained=False)
    assert isinstance(backbone, clip.CLIP)
    changed = {key for key, value in cfg.to_dict().items() if published.to_dict()[key] != value}
    assert changed == {"model_name", "pretrained", "size", "grad_checkpointing"}
