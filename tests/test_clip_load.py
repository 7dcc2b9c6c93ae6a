"""Loading checkpoints: open_clip equivalence at real size, TorchScript archives, plain state
dicts, and the offline failure of a named download."""
import socket
import time

import open_clip  # the reference implementation (requirements-dev.txt)
import pytest
import torch
from torch import nn

import clip
from clip.factory import WeightsFileError


def _perturbed(state_dict: dict, seed: int) -> dict:
    """The state dict with every 1-D float tensor (biases, norms, batch-norm statistics,
    class embedding) randomised: random init sets those to constants (zero attention biases,
    zero last ResNet norms) that would hide mistakes in their paths. Weight matrices are
    random already."""
    generator = torch.Generator().manual_seed(seed)
    result = dict(state_dict)
    for key, value in state_dict.items():
        if value.is_floating_point() and value.dim() <= 1:
            noise = torch.rand(value.shape, generator=generator)
            result[key] = 0.5 + noise if key.endswith("running_var") else value + 0.1 * (noise - 0.5)
    return result


def _encodings(model, images, tokens):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


@pytest.mark.parametrize("open_clip_name", ["RN50-quickgelu", "ViT-B-16-quickgelu"])
def test_real_size_equivalence_with_open_clip_both_ways(open_clip_name, tmp_path):
    torch.manual_seed(0)
    reference = open_clip.create_model(open_clip_name, pretrained=None).eval()
    reference.load_state_dict(_perturbed(reference.state_dict(), seed=1))
    images = torch.randn(2, 3, 224, 224)
    tokens = clip.tokenize(["a photo of a dog", "a diagram of a bicycle with two wheels"])

    path = tmp_path / "open_clip.pt"
    torch.save(reference.state_dict(), path)
    ours, preprocess = clip.load(path)
    assert ours.visual.input_resolution == 224 and not ours.training
    for mine, theirs in zip(_encodings(ours, images, tokens), _encodings(reference, images, tokens)):
        assert mine.shape == theirs.shape
        assert (mine - theirs).abs().max().item() < 1e-4

    # Reverse: our state dict (perturbed again, so that loading changes something) loads
    # strictly into open_clip; the forward passes were compared above.
    ours.load_state_dict(_perturbed(ours.state_dict(), seed=2))
    reference.load_state_dict(ours.state_dict(), strict=True)
    theirs = reference.state_dict()
    assert all(torch.equal(value, theirs[key]) for key, value in ours.state_dict().items())


class _OpenAIStyleArchive(nn.Module):
    """A module with a CLIP's parameters under OpenAI's names plus the integer entries that
    OpenAI's TorchScript archives carry; its forward is a stand-in (we never run archives)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, parameter in model.named_parameters(recurse=False):
            self.register_parameter(name, parameter)
        self.register_buffer("input_resolution", torch.tensor(model.visual.input_resolution))
        self.register_buffer("context_length", torch.tensor(77))
        self.register_buffer("vocab_size", torch.tensor(49408))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.exp() * x


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # making an archive needs torch.jit
@pytest.mark.parametrize("name", ["RN-tiny", "ViT-tiny"])
def test_torchscript_archive_in_half_precision_loads(name, tmp_path):
    torch.manual_seed(0)
    original = clip.create_model(name).eval()
    original.load_state_dict(_perturbed(original.state_dict(), seed=3))
    expected = {key: value.half().float() if value.is_floating_point() else value
                for key, value in original.state_dict().items()}
    archive = torch.jit.trace(_OpenAIStyleArchive(original), torch.ones(2)).half()  # OpenAI ships fp16
    path = tmp_path / "archive.pt"
    torch.jit.save(archive, str(path))

    loaded, preprocess = clip.load(path)
    assert loaded.dtype == torch.float32 and not loaded.training
    state = loaded.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[key], expected[key]) for key in expected)
    assert preprocess.transforms[1].size == (64, 64)


def test_plain_state_dict_wrapped_or_not_loads_identically(tmp_path):
    torch.manual_seed(0)
    original = clip.create_model("ViT-tiny").eval()
    torch.save(original.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": original.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    images, tokens = torch.randn(2, 3, 64, 64), clip.tokenize(["a cat", "a dog"])
    for file in ("plain.pt", "wrapped.pt"):
        loaded, _ = clip.load(str(tmp_path / file))
        for mine, theirs in zip(_encodings(loaded, images, tokens), _encodings(original, images, tokens)):
            assert torch.equal(mine, theirs)


def test_built_model_does_not_share_memory_with_its_state_dict():
    original = clip.create_model("RN-tiny")
    built = clip.build_model(original.state_dict())
    with torch.no_grad():
        built.logit_scale.add_(1.0)
        built.visual.conv1.weight.zero_()
    assert built.logit_scale.item() != original.logit_scale.item()
    assert original.visual.conv1.weight.abs().sum() > 0


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = clip.create_model("RN-tiny").state_dict()
    del state["ln_final.bias"]
    state["visual.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(WeightsFileError, match=r"broken\.pt.*ln_final\.bias.*visual\.extra\.weight"):
        clip.load(path)
    path.write_bytes(b"not weights")
    with pytest.raises(WeightsFileError, match=r"broken\.pt is not a weights file .*: it holds text \('not weights'"):
        clip.load(path)
    path.write_bytes(b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>")
    with pytest.raises(WeightsFileError, match=r"broken\.pt is not a weights file .*: it holds an HTML page"):
        clip.load(path)
    path.write_bytes(b"\x80\x02garbage")  # a pickle's first bytes, then damage
    with pytest.raises(WeightsFileError, match=r"broken\.pt does not hold CLIP weights: it cannot be read") as error:
        clip.load(path)
    assert "weights_only" not in str(error.value)
    with pytest.raises(ValueError, match="not a CLIP state dict: missing text_projection"):
        clip.build_model({"visual.conv1.weight": torch.zeros(1)})


def test_jit_and_unknown_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="never runs"):
        clip.load("ViT-tiny", jit=True)
    with pytest.raises(FileNotFoundError, match="ViT-B/16"):
        clip.load(tmp_path / "nothing.pt")


def test_named_model_offline_fails_fast_saying_where_to_put_the_file(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution (test: offline)")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("TAILCLIP_CACHE", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(RuntimeError) as raised:
        clip.load("RN50")
    assert time.monotonic() - start < 10
    message = str(raised.value)
    assert "by hand" in message and str(tmp_path / "RN50.pt") in message
    assert "openaipublic.azureedge.net/clip/models/afeb0e10" in message
