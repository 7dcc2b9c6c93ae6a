"""open_clip's standard CLIP configs built by our clip.CLIP: classification of every config
open_clip ships, state-dict keys and shapes at full size, and equal embeddings on random
weights for every plain config scaled down."""
import copy
import json
from pathlib import Path

import open_clip  # the reference implementation (requirements-dev.txt)
import pytest
import torch

import clip
from clip.model import LayerScale, QuickGELU

CONFIG_DIR = Path(open_clip.__file__).parent / "model_configs"
CONFIGS = {path.stem: json.loads(path.read_text()) for path in sorted(CONFIG_DIR.glob("*.json"))}

# Our reading of open_clip 3.3's configs: OpenAI's ResNets and the ViTs of OpenAI, LAION,
# DataComp, DFN and MetaCLIP (any width, depth, patch, resolution, head width, MLP ratio,
# layer scale, GELU or QuickGELU). Not plain: timm towers (EVA, SigLIP, ConvNeXt, ViTamin,
# MobileCLIP, PE), Hugging Face text towers, CoCa, and the CLIPA (BERT tokenizer,
# bidirectional text, average-pooled image) and "worldwide" (multilingual tokenizer,
# pooled at its own end token) text towers.
PLAIN = {
    "RN50", "RN50-quickgelu", "RN101", "RN101-quickgelu", "RN50x4", "RN50x4-quickgelu",
    "RN50x16", "RN50x16-quickgelu", "RN50x64", "RN50x64-quickgelu",
    "ViT-S-16", "ViT-S-16-alt", "ViT-S-32", "ViT-S-32-alt",
    "ViT-M-16", "ViT-M-16-alt", "ViT-M-32", "ViT-M-32-alt",
    "ViT-B-16", "ViT-B-16-quickgelu", "ViT-B-16-plus", "ViT-B-16-plus-240",
    "ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-32-256", "ViT-B-32-plus-256",
    "ViT-L-14", "ViT-L-14-quickgelu", "ViT-L-14-280", "ViT-L-14-336", "ViT-L-14-336-quickgelu",
    "ViT-L-16", "ViT-L-16-320",
    "ViT-H-14", "ViT-H-14-quickgelu", "ViT-H-14-378", "ViT-H-14-378-quickgelu", "ViT-H-16",
    "ViT-g-14", "ViT-bigG-14", "ViT-bigG-14-quickgelu", "ViT-e-14",
}


def family(cfg: dict) -> tuple:
    """What distinguishes the computation of a plain config, beyond sizes."""
    vision = cfg["vision_cfg"]
    tower = "ModifiedResNet" if isinstance(vision["layers"], list) else "ViT"
    options = (vision.get("head_width", 64) != 64, vision.get("mlp_ratio", 4.0) != 4.0,
               vision.get("ls_init_value") is not None)
    return tower, cfg.get("quick_gelu", False), options if tower == "ViT" else ()


def test_every_open_clip_config_is_classified_as_we_read_it():
    assert PLAIN <= CONFIGS.keys()
    assert {name for name, cfg in CONFIGS.items() if clip.is_plain_clip(cfg)} == PLAIN
    # Every option combination appears: both towers with both activations, and ViTs with
    # other head widths (H, g, bigG, e), MLP ratios (g, bigG, e) and layer scale (M-alt).
    families = {family(CONFIGS[name]) for name in PLAIN}
    assert {("ModifiedResNet", False, ()), ("ModifiedResNet", True, ()), ("ViT", False, (False, False, False)),
            ("ViT", True, (False, False, False)), ("ViT", False, (True, False, False)),
            ("ViT", False, (True, True, False)), ("ViT", False, (False, False, True))} <= families


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_full_size_state_dict_keys_and_shapes_are_open_clips(name):
    cfg = CONFIGS[name]
    with torch.device("meta"):
        ours = clip.build_from_open_clip_config(cfg)
        reference = open_clip.model.CLIP(**cfg)
    assert ({key: value.shape for key, value in ours.state_dict().items()}
            == {key: value.shape for key, value in reference.state_dict().items()})


def scaled_down(cfg: dict) -> dict:
    """`cfg` with two blocks of two heads per tower, a 3x3 patch grid (ViT) or 64 pixels
    (ResNet), a 12-token context and a 1,000-token vocabulary; every other option kept."""
    cfg = copy.deepcopy(cfg)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    if isinstance(vision["layers"], list):
        vision.update(layers=[1, 1, 1, 1], width=16, image_size=64)
    else:
        vision.update(layers=2, width=2 * vision.get("head_width", 64), image_size=3 * vision["patch_size"])
    text.update(layers=2, width=2 * text["width"] // text["heads"], heads=2, context_length=12, vocab_size=1000)
    cfg["embed_dim"] = 32
    return cfg


def randomise_(model: torch.nn.Module) -> None:
    """Random values in every float tensor, so that no weight (a zero bias, a unit norm, a
    1e-4 layer scale) hides a difference; BatchNorm variances stay positive."""
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if key.endswith("running_var")
                             else torch.randn_like(tensor) * 0.2)


def random_inputs(cfg: dict, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    size = cfg["vision_cfg"]["image_size"]
    images = torch.randn(2, 3, size, size, generator=generator)
    context, vocab = cfg["text_cfg"]["context_length"], cfg["text_cfg"]["vocab_size"]
    tokens = torch.randint(1, vocab - 1, (3, context), generator=generator)
    for row, end in enumerate((context - 1, 5, 1)):  # end-of-text (the largest id), then padding
        tokens[row, end] = vocab - 1
        tokens[row, end + 1:] = 0
    return images, tokens


def assert_same_embeddings(ours: clip.CLIP, reference: torch.nn.Module, cfg: dict) -> None:
    images, tokens = random_inputs(cfg, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for encode, inputs in (("encode_image", images), ("encode_text", tokens)):
            expected = getattr(reference, encode)(inputs)
            assert expected.abs().max() > 0.1  # a real signal, not vanishing activations
            torch.testing.assert_close(getattr(ours, encode)(inputs), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_open_clip_weights_give_the_same_embeddings(name):
    cfg = scaled_down(CONFIGS[name])
    torch.manual_seed(0)
    reference = open_clip.model.CLIP(**cfg).eval()
    randomise_(reference)
    ours = clip.build_from_open_clip_config(cfg).eval()
    ours.load_state_dict(clip.convert_open_clip_state_dict(reference.state_dict()))
    assert_same_embeddings(ours, reference, cfg)


def test_quick_gelu_overrides_the_config():
    cfg = scaled_down(CONFIGS["ViT-B-16"])  # GELU
    reference = open_clip.model.CLIP(**cfg, quick_gelu=True).eval()
    randomise_(reference)
    ours = clip.build_from_open_clip_config(cfg, quick_gelu=True).eval()
    ours.load_state_dict(reference.state_dict())
    assert_same_embeddings(ours, reference, cfg)
    assert isinstance(ours.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(clip.build_from_open_clip_config(cfg).transformer.resblocks[0].mlp.gelu, torch.nn.GELU)


def test_layer_scale_starts_at_the_configs_value():
    model = clip.build_from_open_clip_config(scaled_down(CONFIGS["ViT-M-16-alt"]))
    block = model.visual.transformer.resblocks[0]
    assert isinstance(block.ls_1, LayerScale)
    assert torch.equal(block.ls_2.gamma, torch.full((model.visual.conv1.out_channels,), 1e-4))


def test_openai_models_are_unchanged_by_the_new_options():
    # OpenAI's architectures (QuickGELU, 64-wide heads, MLP ratio 4, no layer scale) are
    # open_clip's "-quickgelu" configs.
    for ours_name, open_clip_name in (("ViT-B/16", "ViT-B-16-quickgelu"), ("RN50", "RN50-quickgelu")):
        with torch.device("meta"):
            built = clip.build_from_open_clip_config(CONFIGS[open_clip_name])
            table = clip.create_model(ours_name)
        assert repr(built) == repr(table)


@pytest.mark.parametrize("change, reason", [
    ({"vision_cfg": {"attentional_pool": True}}, "vision_cfg.attentional_pool = True"),
    ({"vision_cfg": {"pool_type": "avg"}}, "vision_cfg.pool_type = 'avg'"),
    ({"text_cfg": {"no_causal_mask": True}}, "text_cfg.no_causal_mask = True"),
    ({"text_cfg": {"hf_tokenizer_name": "bert-base-uncased"}}, "text_cfg.hf_tokenizer_name = 'bert-base-uncased'"),
    ({"text_cfg": {"mlp_ratio": 3.0}}, "text_cfg.mlp_ratio = 3.0"),
    ({"vision_cfg": {"image_size": [224, 256]}}, "vision_cfg.image_size = [224, 256] (not square)"),
    ({"init_logit_bias": -10}, "init_logit_bias = -10"),
    ({"multimodal_cfg": {}}, "multimodal_cfg = {}"),
    ({"some_future_option": 1}, "some_future_option = 1"),
])
def test_options_we_cannot_reproduce_are_refused_by_name(change, reason):
    cfg = copy.deepcopy(CONFIGS["ViT-B-32"])
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if key in ("vision_cfg", "text_cfg") else value
    assert not clip.is_plain_clip(cfg)
    assert clip.unsupported_options(cfg) == [reason]
    with pytest.raises(ValueError, match="not a standard CLIP") as error:
        clip.build_from_open_clip_config(cfg)
    assert reason in str(error.value)


def test_options_spelled_out_at_their_defaults_are_plain():
    cfg = copy.deepcopy(CONFIGS["ViT-B-32"])
    cfg["vision_cfg"].update(pool_type="tok", attentional_pool=False, patch_dropout=0.0)
    cfg["text_cfg"].update(pool_type="argmax", no_causal_mask=False, proj_bias=False)
    cfg["custom_text"] = False
    assert clip.is_plain_clip(cfg)


def test_state_dicts_saved_by_open_clips_training_script_lose_their_module_prefix():
    reference = open_clip.model.CLIP(**scaled_down(CONFIGS["RN50"]))
    saved = {"module." + key: value for key, value in reference.state_dict().items()}
    ours = clip.build_from_open_clip_config(scaled_down(CONFIGS["RN50"]))
    ours.load_state_dict(clip.convert_open_clip_state_dict(saved))  # strict
    assert torch.equal(ours.visual.attnpool.c_proj.weight, reference.visual.attnpool.c_proj.weight)
