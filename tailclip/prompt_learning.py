"""Prompt learning on a frozen CLIP: `finetune = "prompt"` and `"prompt+visual"`.

"prompt" (CoOp, Zhou et al., IJCV 2022): the words of the class prompt become `n_ctx`
learnable context vectors, shared by all classes or one set per class
(`class_specific_ctx`). Class `c`'s prompt is the token sequence of "X X X X <name c>" whose
X embeddings are replaced by the context vectors; with `ctx_init` they start as the token
embeddings of `class_caption`, so the untrained model is exactly the zero-shot TailCLIP.
"prompt+visual" adds `n_visual_prompts` learnable tokens to the ViT's input (VPT-shallow,
Jia et al., ECCV 2022). Every CLIP weight is frozen except, with `train_logit_scale`,
`logit_scale`; losses, sampler and metrics are TailCLIP's, unchanged.

Checkpoints hold only the trained tensors and the backbone name (`trainable_state_dict`),
and load on top of the same backbone (`load_trainable_state_dict`).
"""
import math

import torch
import torch.nn as nn

import clip
from clip.model import VisionTransformer

from .config import ConfigError
from .data.captions import label_prompts
from .model import TailCLIP, l2_normalise

CONTEXT_PLACEHOLDER = "X"  # one BPE token; its embeddings are replaced by the context vectors


def initial_context(clip_model: nn.Module, n_ctx: int, num_classes: int, class_specific: bool = False,
                    init_caption: str | None = None) -> torch.Tensor:
    """The context vectors' starting value: [n_ctx, width], or [num_classes, n_ctx, width]
    when ``class_specific``.

    With ``init_caption`` (`ctx_init`: the config's `class_caption`): its token embeddings
    (for every class), which must be exactly ``n_ctx`` tokens long; an error otherwise, since a
    silently truncated or padded caption would no longer be the zero-shot prompt. Else
    normal(std=0.02) (CoOp).
    """
    width, device = clip_model.token_embedding.embedding_dim, clip_model.token_embedding.weight.device
    shape = (num_classes, n_ctx, width) if class_specific else (n_ctx, width)
    if init_caption is None:
        return torch.randn(shape, device=device) * 0.02
    caption_ids = clip.get_tokenizer().encode(init_caption)
    if len(caption_ids) != n_ctx:
        raise ConfigError(
            f"ctx_init initialises the n_ctx = {n_ctx} context vectors from class_caption "
            f"{init_caption!r}, which is {len(caption_ids)} tokens long: set n_ctx = "
            f"{len(caption_ids)}, change class_caption, or set ctx_init = False")
    with torch.no_grad():
        caption_embedding = clip_model.token_embedding(torch.tensor(caption_ids, device=device)).float()
    return caption_embedding.expand(shape).clone()


class PromptLearner(nn.Module):
    """Learnable context vectors and the class prompts' token embeddings built from them.

    `forward(token_embedding)` gives the token embeddings [C, L, width] of every class prompt
    (start token, context vectors, class-name tokens, end token, padding up to the longest
    prompt's end: `clip.trim_padding`), to be encoded by
    `clip_model.encode_text_embeddings(..., self.eot_index)`. The fixed parts are
    embedded by the frozen `token_embedding` at each call, not kept: they always match the
    backbone's current weights, also once a checkpoint's weights are loaded into it.
    """

    def __init__(self, clip_model: nn.Module, class_names, n_ctx: int, class_specific: bool = False,
                 init_caption: str | None = None):
        super().__init__()
        placeholder_caption = " ".join([CONTEXT_PLACEHOLDER] * n_ctx) + " "
        tokens = clip.trim_padding(clip.tokenize(label_prompts(placeholder_caption, class_names),
                                                 context_length=clip_model.context_length))
        tokens = tokens.to(clip_model.token_embedding.weight.device)
        self.n_ctx = n_ctx
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("eot_index", tokens.argmax(dim=-1), persistent=False)

        self.context = nn.Parameter(initial_context(clip_model, n_ctx, len(class_names), class_specific,
                                                    init_caption))

    def forward(self, token_embedding: nn.Embedding) -> torch.Tensor:
        with torch.no_grad():
            embedded = token_embedding(self.tokens)
        context = self.context if self.context.dim() == 3 else self.context.expand(len(self.tokens), -1, -1)
        return torch.cat([embedded[:, :1], context.to(embedded.dtype), embedded[:, 1 + self.n_ctx:]], dim=1)


def visual_prompt_tokens(visual: VisionTransformer, count: int) -> nn.Parameter:
    """`count` VPT prompt tokens [count, width], uniform in +-sqrt(6 / (3 * patch^2 + width))
    (Xavier-uniform for the patch embedding's fan-in and fan-out, as VPT)."""
    width = visual.conv1.out_channels
    bound = math.sqrt(6 / (3 * visual.patch_size ** 2 + width))
    return nn.Parameter(torch.empty(count, width, device=visual.conv1.weight.device).uniform_(-bound, bound))


class PromptTailCLIP(TailCLIP):
    """TailCLIP whose class prompts (and, with ``visual_prompts``, ViT inputs) carry learned
    prompts while every CLIP weight stays frozen; encoders, class logits and prediction are
    TailCLIP's. Captions for the contrastive loss go through the frozen text tower.

    The frozen backbone is kept in eval mode whatever `train()` says, so that BatchNorm
    statistics (ResNets) never change: a checkpoint of the prompts alone reproduces the model.
    `label_tokens` are the zero-shot prompts TailCLIP takes; the class embeddings come from
    the `PromptLearner` built from `class_names` (in the same order) and the prompt options
    (`n_ctx`, `class_specific_ctx`, `init_caption`: see `PromptLearner`). ``visual_prompts``:
    the number of VPT tokens ("prompt+visual", a Vision Transformer backbone), 0 for none.
    ``train_logit_scale``: also train `logit_scale`. ``backbone_name`` is kept for checkpoints.
    """

    def __init__(self, clip_model: nn.Module, label_tokens: torch.Tensor, class_names, backbone_name: str,
                 n_ctx: int = 4, class_specific_ctx: bool = False, init_caption: str | None = None,
                 visual_prompts: int = 0, train_logit_scale: bool = True, score: str = "softmax"):
        if len(class_names) != label_tokens.shape[0]:
            raise ValueError(f"{len(class_names)} class names but {label_tokens.shape[0]} class prompts")
        super().__init__(clip_model, label_tokens, "per_step", score)
        for parameter in self.clip_model.parameters():
            parameter.requires_grad_(False)
        self.clip_model.logit_scale.requires_grad_(train_logit_scale)
        self.backbone_name = backbone_name
        self.prompt_learner = PromptLearner(clip_model, class_names, n_ctx, class_specific_ctx, init_caption)
        self.visual_prompts = visual_prompt_tokens(clip_model.visual, visual_prompts) if visual_prompts else None
        self.clip_model.eval()

    def train(self, mode: bool = True) -> "PromptTailCLIP":
        super().train(mode)
        self.clip_model.eval()
        return self

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return l2_normalise(self.clip_model.encode_image(images, prompt_tokens=self.visual_prompts))

    def encode_labels(self) -> torch.Tensor:
        prompts = self.prompt_learner(self.clip_model.token_embedding)
        return l2_normalise(self.clip_model.encode_text_embeddings(prompts, self.prompt_learner.eot_index))


def trainable_state_dict(model: PromptTailCLIP) -> dict:
    """What a prompt-mode checkpoint stores: the backbone name and a copy of every trainable
    parameter, `{"backbone": name, "parameters": {parameter name: tensor on the CPU}}`."""
    return {
        "backbone": model.backbone_name,
        "parameters": {name: parameter.detach().to("cpu", copy=True)
                       for name, parameter in model.named_parameters() if parameter.requires_grad},
    }


def load_trainable_state_dict(model: PromptTailCLIP, state: dict) -> None:
    """Copy `trainable_state_dict`'s output into `model` (built on the same backbone, with the
    same class count and prompt options). Strict: another backbone, a missing or unexpected
    parameter, or a shape mismatch raises `ValueError` naming it."""
    if state.get("backbone") != model.backbone_name:
        raise ValueError(f"the prompts were trained on backbone {state.get('backbone')!r}, "
                         f"this model's backbone is {model.backbone_name!r}")
    trainable = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    saved = state["parameters"]
    missing, unexpected = sorted(trainable.keys() - saved.keys()), sorted(saved.keys() - trainable.keys())
    if missing or unexpected:
        raise ValueError(f"trained parameters do not match the model (check finetune, n_ctx, "
                         f"class_specific_ctx, n_visual_prompts, train_logit_scale): missing {missing}, "
                         f"unexpected {unexpected}")
    for name, parameter in trainable.items():
        if saved[name].shape != parameter.shape:
            raise ValueError(f"trained parameter {name} has shape {tuple(saved[name].shape)}, "
                             f"the model's has {tuple(parameter.shape)}")
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(saved[name])
