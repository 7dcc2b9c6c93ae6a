"""Building what a config asks for: the CLIP backbone (OpenAI's, or open_clip's through
`tailclip.open_clip_backbone`; pretrained or random), `TailCLIP` or its prompt-learning
variant on top, and beside it the objective that trains it; and the process-wide set-up
(seeds, CPU threads) that comes before them."""
import random

import numpy as np
import torch
import torch.nn as nn

import clip
from tailclip.config import CONTRASTIVE_TERM, Config, ConfigError, resolve_path
from tailclip.errors import MissingFileError
from tailclip.losses import (
    DBFOCAL_DATASET_DEFAULTS,
    AsymmetricLoss,
    BalancedAsymmetricLoss,
    BinaryCrossEntropyLoss,
    ContrastiveLoss,
    DistributionBalancedFocalLoss,
    SigmoidFocalLoss,
    TailCLIPObjective,
)
from tailclip.model import TailCLIP
from tailclip.open_clip_backbone import OpenCLIPBackbone, build_open_clip_backbone, is_open_clip_name
from tailclip.prompt_learning import PromptTailCLIP
from tailclip.text_tokens import text_tokenizer


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) so that a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_cpu_threads(num_threads: int) -> None:
    """``torch.set_num_threads(num_threads)``, unless 0 (torch's default, one per core).

    A tiny model's operations are too small to gain from a second thread, and threads that
    wait for each other slow a run several times over on cores other programs are using."""
    if num_threads:
        torch.set_num_threads(num_threads)


def build_clip(cfg: Config, pretrained: bool | None = None) -> nn.Module:
    """The backbone ``cfg.model_name`` with the weights ``cfg.pretrained`` names (random ones
    when ``pretrained`` is False): OpenAI's CLIP (``clip.load``, or a checkpoint file), or an
    open_clip model ("open_clip:<name>", `tailclip.open_clip_backbone`).

    Its text context must equal ``cfg.max_length`` and its input resolution ``cfg.size``;
    with ``interpolate_pos_embedding`` a Vision Transformer of our ``clip`` package has its
    positional embedding resized instead.
    """
    weights = False if pretrained is False else cfg.pretrained
    if is_open_clip_name(cfg.model_name):
        model = build_open_clip_backbone(cfg.model_name, weights)
    else:
        model = _openai_clip(cfg.model_name, weights)
    _check_text_context(cfg, model)
    _fit_resolution(cfg, model)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    return model


def _openai_clip(name: str, weights: bool | str) -> clip.CLIP:
    if weights is False:
        return clip.create_model(name)
    if weights is True:  # an OpenAI name with weights (`Config` checks it)
        return clip.load_model(name, device="cpu")
    if not resolve_path(weights).is_file():
        raise MissingFileError(f"pretrained = {weights!r} is not a checkpoint file; for {name} pretrained is "
                               "True (OpenAI's weights), False (random ones) or the path of a checkpoint file")
    model = clip.load_model(resolve_path(weights), device="cpu")
    with torch.device("meta"):
        expected = clip.create_model(name).state_dict()
    if {k: v.shape for k, v in model.state_dict().items()} != {k: v.shape for k, v in expected.items()}:
        raise ConfigError(f"pretrained = {weights!r} holds another architecture than model_name = {name!r}")
    return model


def _check_text_context(cfg: Config, model: nn.Module) -> None:
    if cfg.max_length != model.context_length:
        raise ConfigError(f"max_length = {cfg.max_length} but {cfg.model_name}'s text tower takes "
                         f"{model.context_length} tokens; set max_length = {model.context_length}")


def _fit_resolution(cfg: Config, model: nn.Module) -> None:
    """Resize the positional embedding of a Vision Transformer to ``size`` when it takes
    another (`Config` has checked that it may)."""
    if not isinstance(model, OpenCLIPBackbone) and model.visual.input_resolution != cfg.size:
        clip.interpolate_positional_embedding(model, cfg.size)


def build_model(cfg: Config, label_prompts: list[str], pretrained: bool | None = None) -> TailCLIP:
    """The model ``cfg.finetune`` asks for, on the CPU, on the backbone of `build_clip`
    (`build_tailclip`). ``label_prompts`` are the class prompts, ``cfg.class_caption + name``
    for each class."""
    return build_tailclip(cfg, build_clip(cfg, pretrained), label_prompts)


def build_tailclip(cfg: Config, backbone: nn.Module, label_prompts: list[str]) -> TailCLIP:
    """`TailCLIP` (full fine-tuning) or the prompt-learning `PromptTailCLIP` on ``backbone``."""
    if not all(prompt.startswith(cfg.class_caption) for prompt in label_prompts):
        raise ValueError(f"class prompts must start with class_caption {cfg.class_caption!r}")
    label_tokens = text_tokenizer(cfg)(label_prompts)
    if cfg.finetune == "full":
        return TailCLIP(backbone, label_tokens, cfg.label_embeddings, cfg.score)
    visual = cfg.finetune == "prompt+visual"
    class_names = [prompt[len(cfg.class_caption):] for prompt in label_prompts]
    return PromptTailCLIP(backbone, label_tokens, class_names, cfg.model_name, n_ctx=cfg.n_ctx,
                          class_specific_ctx=cfg.class_specific_ctx,
                          init_caption=cfg.class_caption if cfg.ctx_init else None,
                          visual_prompts=cfg.n_visual_prompts if visual else 0,
                          train_logit_scale=cfg.train_logit_scale, score=cfg.score)


def build_objective(cfg: Config, model: TailCLIP, class_weights=None, class_priors=None) -> TailCLIPObjective:
    """The objective that trains ``model``: the terms of ``cfg.loss_function``, in that order.

    BAL and ASL take ``asl_gamma_neg``, ``asl_gamma_pos``, ``asl_clip``, ``asl_eps`` (BAL also
    ``label_smoothing``, and ``class_weights`` [C] when ``use_weighted_loss``); "focal"
    ``focal_*``, "dbfocal" ``dbfocal_*`` (`dbfocal_settings`) and ``class_priors`` [C], the
    training split's class frequencies; the "clip" term is `contrastive_kind`. A logit bias
    of ``model`` that no term uses stops requiring grad: a parameter without a gradient would
    stop DistributedDataParallel.
    """
    focusing = dict(gamma_neg=cfg.asl_gamma_neg, gamma_pos=cfg.asl_gamma_pos, clip=cfg.asl_clip, eps=cfg.asl_eps)
    build = {
        CONTRASTIVE_TERM: lambda: ContrastiveLoss(contrastive_kind(cfg, model.logit_bias is not None)),
        "bal": lambda: BalancedAsymmetricLoss(**focusing, label_smoothing=cfg.label_smoothing,
                                              class_weights=class_weights if cfg.use_weighted_loss else None),
        "asl": lambda: AsymmetricLoss(**focusing),
        "bce": BinaryCrossEntropyLoss,
        "focal": lambda: SigmoidFocalLoss(gamma=cfg.focal_gamma, alpha=cfg.focal_alpha),
        "dbfocal": lambda: DistributionBalancedFocalLoss(class_priors, **dbfocal_settings(cfg)),
    }
    objective = TailCLIPObjective({name: build[name]() for name in cfg.loss_function}, cfg.asl_mul)
    if model.logit_bias is not None and not objective.uses_logit_bias:
        model.logit_bias.requires_grad_(False)
    return objective


def dbfocal_settings(cfg: Config) -> dict:
    """The DB-focal parameters of ``cfg``; mu and lambda left at None take LMPT's values for
    ``cfg.dataset`` (its COCO-LT ones for datasets other than VOC-MLT)."""
    dataset_defaults = DBFOCAL_DATASET_DEFAULTS.get(cfg.dataset, DBFOCAL_DATASET_DEFAULTS["coco_mlt"])
    return dict(
        alpha=cfg.dbfocal_alpha, beta=cfg.dbfocal_beta, kappa=cfg.dbfocal_kappa,
        gamma=cfg.dbfocal_gamma, scale=cfg.dbfocal_scale,
        mu=dataset_defaults["mu"] if cfg.dbfocal_mu is None else cfg.dbfocal_mu,
        neg_scale=dataset_defaults["neg_scale"] if cfg.dbfocal_lambda is None else cfg.dbfocal_lambda,
    )


def contrastive_kind(cfg: Config, has_logit_bias: bool) -> str:
    """The "clip" term ``cfg.contrastive`` asks for: "auto" is the backbone's own pretraining
    objective, "sigmoid" for a model with a learned logit bias (SigLIP), else "softmax"."""
    if cfg.contrastive == "auto":
        return "sigmoid" if has_logit_bias else "softmax"
    if cfg.contrastive == "sigmoid" and not has_logit_bias:
        raise ConfigError(
            f"contrastive = 'sigmoid' needs a backbone with a learned logit bias (a SigLIP model), "
            f"and {cfg.model_name!r} has none; set contrastive = 'softmax' or 'auto'")
    return cfg.contrastive
