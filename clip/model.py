"""The CLIP model, parameter-for-parameter compatible with OpenAI's checkpoints.

Parameter and buffer names are exactly OpenAI's, so their state dicts load strictly. Unlike
OpenAI's code, every tensor is batch-first ([N, L, width]) and attention runs through
`torch.nn.functional.scaled_dot_product_attention`, which picks fused kernels on GPU.
"""
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .architectures import Architecture, vit_names


class Bottleneck(nn.Module):
    """ResNet bottleneck whose stride is an average pool (anti-aliasing) before the last conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)

        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            # OpenAI names the pool "-1" so that the conv and norm keep the keys "0" and "1".
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[N, L, width] -> [N, heads, L, width // heads]."""
    n, length, width = x.shape
    return x.view(n, length, heads, width // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[N, heads, L, head_dim] -> [N, L, heads * head_dim]."""
    n, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * head_dim)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean of the feature map attends over all positions."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(start_dim=2).transpose(1, 2)  # [N, C, H, W] -> [N, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        q = _split_heads(self.q_proj(x[:, :1]), self.num_heads)
        k = _split_heads(self.k_proj(x), self.num_heads)
        v = _split_heads(self.v_proj(x), self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.c_proj(_merge_heads(out)).squeeze(1)


class ModifiedResNet(nn.Module):
    """OpenAI's ResNet: 3-conv stem with an average pool, anti-aliased strided bottlenecks,
    and attention pooling instead of global average pooling."""

    def __init__(self, layers: tuple[int, int, int, int], output_dim: int, heads: int,
                 input_resolution: int = 224, width: int = 64):
        super().__init__()
        self.output_dim = output_dim
        self.input_resolution = input_resolution

        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        self._inplanes = width  # mutated by _make_layer while building the stages
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)

        embed_dim = width * 32  # the ResNet feature dimension
        self.attnpool = AttentionPool2d(input_resolution // 32, embed_dim, heads, output_dim)
        self.grad_checkpointing = False

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.type(self.conv1.weight.dtype)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = run_blocks(stage, x, self.grad_checkpointing)
        return self.attnpool(x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, so that half-precision activations stay stable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class MultiheadAttention(nn.Module):
    """Self-attention holding `nn.MultiheadAttention`'s parameters (`in_proj_weight`,
    `in_proj_bias`, `out_proj`), computed with `scaled_dot_product_attention`."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's initialisation, which OpenAI's vision towers keep.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        heads = [_split_heads(t, self.heads) for t in (q, k, v)]
        out = F.scaled_dot_product_attention(*heads, is_causal=is_causal)
        return self.out_proj(_merge_heads(out))


class LayerScale(nn.Module):
    """A learned per-channel scale of a residual branch (CaiT), as open_clip's `ls_init_value`."""

    def __init__(self, width: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block; `causal` blocks attend only to earlier positions.

    OpenAI's block is the default; open_clip's standard models vary the MLP width
    (`mlp_ratio`), the activation (`quick_gelu=False`: exact GELU) and may scale each
    residual branch (`ls_init_value`: `ls_1`, `ls_2`, open_clip's names)."""

    def __init__(self, d_model: int, n_head: int, causal: bool = False, mlp_ratio: float = 4.0,
                 quick_gelu: bool = True, ls_init_value: float | None = None):
        super().__init__()
        mlp_width = int(d_model * mlp_ratio)
        self.attn = MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, mlp_width)),
            ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
            ("c_proj", nn.Linear(mlp_width, d_model)),
        ]))
        self.ln_2 = LayerNorm(d_model)
        self.ls_1 = nn.Identity() if ls_init_value is None else LayerScale(d_model, ls_init_value)
        self.ls_2 = nn.Identity() if ls_init_value is None else LayerScale(d_model, ls_init_value)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x), is_causal=self.causal))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


@contextmanager
def _batch_norm_statistics_kept(module: nn.Module):
    """Restore the running statistics of `module`'s training BatchNorms on exit: a block
    recomputed for the backward pass must not count its batch a second time."""
    norms = [m for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, mean, var, count in saved:
                norm.running_mean.copy_(mean)
                norm.running_var.copy_(var)
                norm.num_batches_tracked.copy_(count)


def _batch_norm_contexts(block: nn.Module):
    """(forward context, recomputation context) for `torch.utils.checkpoint`."""
    return nullcontext(), _batch_norm_statistics_kept(block)


def run_blocks(blocks: nn.Sequential, x: torch.Tensor, grad_checkpointing: bool) -> torch.Tensor:
    """`blocks(x)`; with `grad_checkpointing` (and autograd recording), each block keeps only
    its input for the backward pass and is run again there to rebuild its activations."""
    if not (grad_checkpointing and torch.is_grad_enabled()):
        return blocks(x)
    for block in blocks:
        # Run eagerly, a recomputed BatchNorm would update its running statistics again, so
        # its block gets a context restoring them. torch.compile recomputes from its own
        # graph, which updates them once, and traces no such context.
        if (not torch.compiler.is_compiling()
                and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in block.modules())):
            x = checkpoint(block, x, use_reentrant=False, context_fn=partial(_batch_norm_contexts, block))
        else:
            x = checkpoint(block, x, use_reentrant=False)
    return x


class Transformer(nn.Module):
    """A stack of residual attention blocks on batch-first input [N, L, width].

    `causal=True` is the text tower's mask (OpenAI's `attn_mask`); it is an SDPA flag rather
    than a buffer, so the state dict has no mask, as OpenAI's checkpoints have none.
    The other options are `ResidualAttentionBlock`'s."""

    def __init__(self, width: int, layers: int, heads: int, causal: bool = False, mlp_ratio: float = 4.0,
                 quick_gelu: bool = True, ls_init_value: float | None = None):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[
            ResidualAttentionBlock(width, heads, causal, mlp_ratio, quick_gelu, ls_init_value)
            for _ in range(layers)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.resblocks, x, self.grad_checkpointing)


class VisionTransformer(nn.Module):
    """ViT image tower: patch embedding, class token, pre/post LayerNorm, projection.
    `block_options` are `ResidualAttentionBlock`'s (mlp_ratio, quick_gelu, ls_init_value)."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int, **block_options):
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)

        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, **block_options)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    @property
    def patch_size(self) -> int:
        return self.conv1.kernel_size[0]

    def forward(self, x: torch.Tensor, prompt_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Embed images [N, 3, H, W] -> [N, output_dim].

        `prompt_tokens` ([P, width] shared, or [N, P, width]) are inserted after the class
        token once positional embeddings are added, before `ln_pre` (VPT-shallow)."""
        x = self.conv1(x.type(self.conv1.weight.dtype))
        x = x.flatten(start_dim=2).transpose(1, 2)  # [N, width, g, g] -> [N, g*g, width]
        if x.shape[1] + 1 != self.positional_embedding.shape[0]:
            raise ValueError(
                f"images of {tuple(x.shape[-2:])} pixels give {x.shape[1]} patches, but the positional "
                f"embedding has {self.positional_embedding.shape[0] - 1}: resize images to "
                f"{self.input_resolution} or call clip.interpolate_positional_embedding")
        class_token = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([class_token, x], dim=1) + self.positional_embedding.to(x.dtype)
        if prompt_tokens is not None:
            x = self._insert_prompts(x, prompt_tokens)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0, :]) @ self.proj

    def _insert_prompts(self, x: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        if prompt_tokens.dim() == 2:
            prompt_tokens = prompt_tokens.expand(x.shape[0], -1, -1)
        if prompt_tokens.dim() != 3 or prompt_tokens.shape[0] != x.shape[0] or prompt_tokens.shape[2] != x.shape[2]:
            raise ValueError(f"prompt_tokens must be [P, {x.shape[2]}] or [{x.shape[0]}, P, {x.shape[2]}], "
                             f"got {list(prompt_tokens.shape)}")
        return torch.cat([x[:, :1], prompt_tokens.to(x.dtype), x[:, 1:]], dim=1)


class CLIP(nn.Module):
    """Image and text towers projected into one embedding space, with a learned temperature.

    The arguments after `transformer_layers` default to OpenAI's models; open_clip's standard
    models change them (`clip.open_clip_compat`): attention heads of `vision_head_width`
    channels in the image tower, its MLP width `vision_mlp_ratio * vision_width`, its layer
    scale `vision_ls_init_value`, and exact GELU instead of QuickGELU in both towers."""

    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int | tuple[int, int, int, int],
                 vision_width: int, vision_patch_size: int | None, context_length: int, vocab_size: int,
                 transformer_width: int, transformer_heads: int, transformer_layers: int,
                 vision_head_width: int = 64, vision_mlp_ratio: float = 4.0,
                 vision_ls_init_value: float | None = None, quick_gelu: bool = True):
        super().__init__()
        self.context_length = context_length

        if isinstance(vision_layers, (tuple, list)):
            self.visual = ModifiedResNet(layers=tuple(vision_layers), output_dim=embed_dim,
                                         heads=vision_width * 32 // vision_head_width,
                                         input_resolution=image_resolution, width=vision_width)
        else:
            self.visual = VisionTransformer(input_resolution=image_resolution, patch_size=vision_patch_size,
                                            width=vision_width, layers=vision_layers,
                                            heads=vision_width // vision_head_width, output_dim=embed_dim,
                                            mlp_ratio=vision_mlp_ratio, quick_gelu=quick_gelu,
                                            ls_init_value=vision_ls_init_value)

        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads, causal=True,
                                       quick_gelu=quick_gelu)
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """OpenAI's initialisation for the text tower, the attention pool and the ResNet."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

        if isinstance(self.visual, ModifiedResNet):
            attnpool = self.visual.attnpool
            std = attnpool.c_proj.in_features ** -0.5
            for proj in (attnpool.q_proj, attnpool.k_proj, attnpool.v_proj, attnpool.c_proj):
                nn.init.normal_(proj.weight, std=std)
            # Zero the last norm of each residual branch: every block starts as the identity.
            for stage in (self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4):
                for block in stage:
                    nn.init.zeros_(block.bn3.weight)

        width, layers = self.transformer.width, self.transformer.layers
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        attn_std = width ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every residual block of both towers in the backward pass instead of
        keeping its activations (`torch.utils.checkpoint`): the same gradients for far less
        activation memory, at the cost of a second forward pass through the blocks."""
        for tower in self.modules():
            if isinstance(tower, (Transformer, ModifiedResNet)):
                tower.grad_checkpointing = enable

    def encode_image(self, images: torch.Tensor, prompt_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Image embeddings [N, embed_dim] (not normalised); `prompt_tokens` need a ViT."""
        if prompt_tokens is None:
            return self.visual(images.type(self.dtype))
        if not isinstance(self.visual, VisionTransformer):
            raise ValueError("visual prompt tokens need a Vision Transformer backbone "
                             f"({', '.join(vit_names())}); this model's image tower is a ResNet")
        return self.visual(images.type(self.dtype), prompt_tokens=prompt_tokens)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings [N, embed_dim] (not normalised) of token ids [N, L], L at most the
        context length: `clip.trim_padding(tokens)` gives the same embeddings, faster."""
        # The end-of-text token has the largest id, so argmax finds where to pool.
        return self.encode_text_embeddings(self.token_embedding(tokens).type(self.dtype), tokens.argmax(dim=-1))

    def encode_text_embeddings(self, x: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """The text tower from token embeddings `x` [N, L, width] (before the positional
        embedding), pooled at positions `eot_index` [N]. L may be shorter than the context
        length: the positions after the last `eot_index` change no pooled embedding (causal
        mask), so they may be left out (`clip.trim_padding`)."""
        context_length = self.positional_embedding.shape[0]
        if x.shape[1] > context_length:
            raise ValueError(f"text embeddings have {x.shape[1]} positions, more than the model's context "
                             f"length {context_length}")
        x = x + self.positional_embedding[:x.shape[1]].type(x.dtype)
        x = self.ln_final(self.transformer(x))
        return x[torch.arange(x.shape[0], device=x.device), eot_index] @ self.text_projection

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_image [N_img, N_txt], logits_per_text [N_txt, N_img])."""
        image_features = F.normalize(self.encode_image(images), dim=-1)
        text_features = F.normalize(self.encode_text(tokens), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


# Keys OpenAI's TorchScript archives carry besides the weights.
_ARCHIVE_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")


def _count_blocks(state_dict: dict, prefix: str) -> int:
    """Number of distinct block indices i among keys `prefix.i.*`."""
    return len({key[len(prefix):].split(".")[1] for key in state_dict if key.startswith(prefix + ".")})


def infer_architecture(state_dict: dict) -> Architecture:
    """The architecture of a CLIP state dict, read from its tensor shapes (OpenAI's rules)."""
    required = ["visual.conv1.weight", "text_projection", "positional_embedding", "token_embedding.weight",
                "ln_final.weight"]
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise ValueError(f"not a CLIP state dict: missing {', '.join(missing)}")

    if any(key.startswith("visual.layer1.") for key in state_dict):
        vision_layers = tuple(_count_blocks(state_dict, f"visual.layer{stage}") for stage in (1, 2, 3, 4))
        vision_width = state_dict["visual.layer1.0.conv1.weight"].shape[0]
        output_grid = round((state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        image_resolution = output_grid * 32
        vision_patch_size = None
    else:
        vision_layers = sum(1 for key in state_dict
                            if key.startswith("visual.") and key.endswith(".attn.in_proj_weight"))
        vision_width = state_dict["visual.conv1.weight"].shape[0]
        vision_patch_size = state_dict["visual.conv1.weight"].shape[-1]
        grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        image_resolution = vision_patch_size * grid

    transformer_width = state_dict["ln_final.weight"].shape[0]
    return Architecture(
        embed_dim=state_dict["text_projection"].shape[1],
        image_resolution=image_resolution,
        vision_layers=vision_layers,
        vision_width=vision_width,
        vision_patch_size=vision_patch_size,
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        transformer_width=transformer_width,
        transformer_heads=transformer_width // 64,
        transformer_layers=_count_blocks(state_dict, "transformer.resblocks"),
    )


def build_model(state_dict: dict) -> CLIP:
    """A float32 CLIP in eval mode holding `state_dict`, its architecture read from the shapes.

    Loads strictly: missing or unexpected keys raise a `RuntimeError` naming them."""
    state_dict = {key: value for key, value in state_dict.items() if key not in _ARCHIVE_ONLY_KEYS}
    # Built on the meta device, then given uninitialised memory: no time is spent on a random
    # initialisation that loading overwrites. (Copying, not assigning, keeps the model from
    # sharing memory with the caller's tensors.)
    with torch.device("meta"):
        model = CLIP(**asdict(infer_architecture(state_dict)))
    model = model.to_empty(device="cpu")
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"state dict does not match the inferred {type(model).__name__} architecture: "
                           f"missing keys {result.missing_keys}, unexpected keys {result.unexpected_keys}")
    return model.float().eval()


def interpolate_positional_embedding(model: CLIP, resolution: int) -> None:
    """Resize a ViT's patch positional embeddings for `resolution`-pixel images:
    bicubic with `antialias=True`, as open_clip and timm resize them.

    The class-token row is kept as is. Replaces the parameter, so call it before building an
    optimizer. ResNets (whose attention pool is tied to their resolution) raise `ValueError`."""
    visual = model.visual
    if not isinstance(visual, VisionTransformer):
        raise ValueError("positional-embedding interpolation needs a Vision Transformer backbone "
                         f"({', '.join(vit_names())}); this model's image tower is a ResNet")
    if resolution % visual.patch_size:
        raise ValueError(f"resolution {resolution} is not a multiple of the patch size {visual.patch_size}")
    old_grid = visual.input_resolution // visual.patch_size
    new_grid = resolution // visual.patch_size
    embedding = visual.positional_embedding.detach()
    width = embedding.shape[1]

    grid = embedding[1:].reshape(1, old_grid, old_grid, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new_grid, new_grid), mode="bicubic", antialias=True,
                         align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, width).to(embedding.dtype)
    visual.positional_embedding = nn.Parameter(torch.cat([embedding[:1], grid]),
                                               requires_grad=visual.positional_embedding.requires_grad)
    visual.input_resolution = resolution
