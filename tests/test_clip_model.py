"""The CLIP model: architectures against open_clip, initialisation, masking, extension points."""
from types import SimpleNamespace

import open_clip  # the reference implementation (requirements-dev.txt)
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clip
from clip.architectures import ARCHITECTURES, CHECKPOINT_URLS
from clip.model import infer_architecture
from clip.transform import CLIP_MEAN, CLIP_STD, clip_transform

# Our names -> open_clip's model config names.
OPEN_CLIP_NAMES = {
    "RN50": "RN50", "RN101": "RN101", "RN50x4": "RN50x4", "RN50x16": "RN50x16", "RN50x64": "RN50x64",
    "ViT-B/32": "ViT-B-32", "ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14", "ViT-L/14@336px": "ViT-L-14-336",
}
# Parameter counts OpenAI's released checkpoints have.
PARAMETER_COUNTS = {
    "RN50": 102_007_137, "RN101": 119_688_033, "RN50x4": 178_300_601, "RN50x16": 290_979_217,
    "RN50x64": 623_258_305, "ViT-B/32": 151_277_313, "ViT-B/16": 149_620_737,
    "ViT-L/14": 427_616_513, "ViT-L/14@336px": 427_944_193,
}


def test_available_models_are_the_official_checkpoints():
    assert clip.available_models() == list(OPEN_CLIP_NAMES)
    for url in CHECKPOINT_URLS.values():
        assert len(url.split("/")[-2]) == 64  # the sha256 path segment


@pytest.mark.parametrize("name", list(OPEN_CLIP_NAMES))
def test_every_backbone_builds_with_open_clips_names_and_shapes(name):
    # On the meta device: no memory, no initialisation cost, even for RN50x64.
    with torch.device("meta"):
        ours = clip.create_model(name)
        reference = open_clip.create_model(OPEN_CLIP_NAMES[name] + "-quickgelu", device="meta")
    ours_shapes = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    reference_shapes = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    assert ours_shapes == reference_shapes
    assert sum(p.numel() for p in ours.parameters()) == PARAMETER_COUNTS[name]
    image_size = reference.visual.image_size
    image_size = image_size[0] if isinstance(image_size, tuple) else image_size
    assert ours.visual.input_resolution == clip.model_resolution(name) == image_size
    assert infer_architecture(ours.state_dict()) == ARCHITECTURES[name]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_table_follows_openais_head_rule(name):
    # build_model infers heads as width // 64; a table entry breaking the rule would not
    # survive a save/load round trip.
    arch = ARCHITECTURES[name]
    assert arch.transformer_heads == arch.transformer_width // 64
    with torch.device("meta"):
        assert infer_architecture(clip.create_model(name).state_dict()) == arch


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="ViT-B/16"):
        clip.create_model("ViT-H/14")
    with pytest.raises(ValueError, match="RN50"):
        clip.model_resolution("RN18")


@pytest.fixture(scope="module")
def vit_tiny():
    torch.manual_seed(0)
    return clip.create_model("ViT-tiny").eval()


@pytest.fixture(scope="module")
def rn_tiny():
    torch.manual_seed(0)
    return clip.create_model("RN-tiny").eval()


@pytest.fixture(scope="module")
def tokens():
    return clip.tokenize(["a photo of a dog", "a diagram", "two cats on a sofa, sleeping"])


@pytest.mark.parametrize("model_name", ["vit_tiny", "rn_tiny"])
def test_tiny_models_shapes_and_openai_initialisation(model_name, tokens, request):
    model = request.getfixturevalue(model_name)
    assert model.visual.input_resolution == 64
    assert model.token_embedding.weight.shape == (49408, 64)
    assert model.positional_embedding.shape == (77, 64)
    assert model.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.positional_embedding.std().item() == pytest.approx(0.01, rel=0.1)
    assert model.logit_scale.item() == pytest.approx(2.6592600, abs=1e-6)  # log(1 / 0.07)
    assert "attn_mask" not in " ".join(model.state_dict())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model.encode_image(images).shape == (2, 64)
        assert model.encode_text(tokens).shape == (3, 64)


def test_resnet_blocks_start_as_identity(rn_tiny):
    stages = [rn_tiny.visual.layer1, rn_tiny.visual.layer2, rn_tiny.visual.layer3, rn_tiny.visual.layer4]
    assert all(torch.count_nonzero(block.bn3.weight) == 0 for stage in stages for block in stage)


@pytest.mark.parametrize("model_name", ["vit_tiny", "rn_tiny"])
def test_bfloat16_autocast_runs_close_to_float32(model_name, tokens, request):
    model = request.getfixturevalue(model_name)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = model(images, tokens)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(images, tokens)[0]
    torch.testing.assert_close(mixed.float(), full, atol=0.1, rtol=0.05)


def test_forward_is_scaled_cosine_similarity(vit_tiny, tokens):
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits_per_image, logits_per_text = vit_tiny(images, tokens)
        image_features, text_features = vit_tiny.encode_image(images), vit_tiny.encode_text(tokens)
    cosine = F.cosine_similarity(image_features[:, None], text_features[None], dim=-1)
    torch.testing.assert_close(logits_per_image, vit_tiny.logit_scale.exp() * cosine)
    torch.testing.assert_close(logits_per_text, logits_per_image.t())


def test_encode_text_is_encode_text_embeddings_at_eot(vit_tiny, tokens):
    with torch.no_grad():
        direct = vit_tiny.encode_text(tokens)
        embedded = vit_tiny.encode_text_embeddings(vit_tiny.token_embedding(tokens), tokens.argmax(-1))
    torch.testing.assert_close(direct, embedded, rtol=0, atol=0)
    assert (tokens.argmax(-1) == (tokens == 49407).nonzero()[:, 1]).all()


def test_text_tower_is_causal(vit_tiny):
    torch.manual_seed(1)
    x = torch.randn(2, 77, 64)
    # The second text pools at the last position, so the whole context goes through the
    # transformer (no trimming) and only the causal mask shields position 5 from later ones.
    pool_at = torch.tensor([5, 76])
    later_changed, earlier_changed = x.clone(), x.clone()
    later_changed[0, 6:] += 1.0
    earlier_changed[0, 4] += 1.0
    with torch.no_grad():
        base = vit_tiny.encode_text_embeddings(x, pool_at)[0]
        assert torch.equal(vit_tiny.encode_text_embeddings(later_changed, pool_at)[0], base)
        assert not torch.allclose(vit_tiny.encode_text_embeddings(earlier_changed, pool_at)[0], base)


def test_tokens_trimmed_after_the_last_end_of_text_give_the_same_embeddings(vit_tiny, tokens):
    full_context = clip.tokenize("word " * 100, truncate=True)  # end of text at position 76
    lengths = []
    hook = vit_tiny.transformer.register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            trimmed = vit_tiny.encode_text(clip.trim_padding(tokens))
            beside_a_full_context = vit_tiny.encode_text(clip.trim_padding(torch.cat([tokens, full_context])))
            untrimmed = vit_tiny.encode_text(tokens)
    finally:
        hook.remove()
    # "two cats on a sofa, sleeping": start, 7 word and comma tokens, end of text.
    assert lengths == [9, 77, 77]
    torch.testing.assert_close(trimmed, untrimmed, rtol=0, atol=1e-5)
    torch.testing.assert_close(beside_a_full_context[:len(tokens)], untrimmed, rtol=0, atol=1e-5)


def test_text_longer_than_the_context_is_refused(vit_tiny):
    with pytest.raises(ValueError, match="78 positions, more than the model's context length 77"):
        vit_tiny.encode_text_embeddings(torch.zeros(1, 78, 64), torch.tensor([3]))


def test_visual_prompt_tokens_enter_after_class_and_positions_before_ln_pre(vit_tiny):
    images, prompts = torch.randn(2, 3, 64, 64), torch.randn(3, 64)
    seen = {}
    hook = vit_tiny.visual.ln_pre.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    try:
        with torch.no_grad():
            shared = vit_tiny.encode_image(images, prompt_tokens=prompts)
            ln_pre_input = seen["x"]
            per_image = vit_tiny.encode_image(images, prompt_tokens=prompts.expand(2, 3, 64))
            plain = vit_tiny.encode_image(images)
    finally:
        hook.remove()
    visual = vit_tiny.visual
    assert ln_pre_input.shape == (2, 1 + 3 + 16, 64)
    class_token = visual.class_embedding + visual.positional_embedding[0]
    torch.testing.assert_close(ln_pre_input[:, 0], class_token.expand(2, 64))
    assert torch.equal(ln_pre_input[:, 1:4], prompts.expand(2, 3, 64))  # no positional embedding on prompts
    torch.testing.assert_close(shared, per_image, rtol=0, atol=0)
    assert not torch.allclose(shared, plain)


def test_visual_prompts_of_wrong_width_are_refused(vit_tiny):
    with pytest.raises(ValueError, match="prompt_tokens must be"):
        vit_tiny.encode_image(torch.randn(2, 3, 64, 64), prompt_tokens=torch.randn(3, 32))


def test_resnet_refuses_visual_prompts_naming_vits(rn_tiny):
    with pytest.raises(ValueError, match="ViT-B/16"):
        rn_tiny.encode_image(torch.randn(1, 3, 64, 64), prompt_tokens=torch.randn(2, 512))


def test_wrong_image_size_points_to_interpolation(vit_tiny):
    with pytest.raises(ValueError, match="interpolate_positional_embedding"):
        vit_tiny.encode_image(torch.randn(1, 3, 96, 96))


def test_interpolation_matches_open_clip_and_keeps_class_token():
    torch.manual_seed(0)
    model = clip.create_model("ViT-tiny")
    before = model.visual.positional_embedding.detach().clone()
    reference = {"visual.positional_embedding": before.clone()}
    open_clip.model.resize_pos_embed(reference, SimpleNamespace(visual=SimpleNamespace(grid_size=(6, 6))))

    clip.interpolate_positional_embedding(model, 96)
    after = model.visual.positional_embedding
    assert after.shape == (6 * 6 + 1, 64) and after.requires_grad
    assert model.visual.input_resolution == 96
    assert torch.equal(after[0], before[0])
    torch.testing.assert_close(after.detach(), reference["visual.positional_embedding"])
    assert model.encode_image(torch.randn(1, 3, 96, 96)).shape == (1, 64)
    assert infer_architecture(model.state_dict()).image_resolution == 96


def test_interpolation_to_the_same_resolution_is_identity():
    model = clip.create_model("ViT-tiny")
    before = model.visual.positional_embedding.detach().clone()
    clip.interpolate_positional_embedding(model, 64)
    assert torch.equal(model.visual.positional_embedding, before)


def test_interpolation_refuses_resnets_and_partial_patches(rn_tiny):
    with pytest.raises(ValueError, match="ViT-L/14"):
        clip.interpolate_positional_embedding(rn_tiny, 96)
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        clip.interpolate_positional_embedding(clip.create_model("ViT-tiny"), 70)


def test_clip_transform_crops_the_short_side_and_normalises():
    assert (CLIP_MEAN, CLIP_STD) == (open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    gray = Image.new("L", (100, 50), color=128)  # grayscale input is converted to RGB
    tensor = clip_transform(64)(gray)
    assert tensor.shape == (3, 64, 64)
    expected = (128 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(tensor.mean(dim=(1, 2)), expected.float(), atol=1e-5, rtol=0)
