"""Training objectives of TailCLIP.

- ``BalancedAsymmetricLoss`` (BAL): the paper's loss on the class logits; an asymmetric loss
  on max-normalised logits, with label smoothing and class weights on the positive term.
- ``AsymmetricLoss`` (ASL, Ridnik et al., ICCV 2021) for ablations.
- ``clip_contrastive_loss``: the symmetric InfoNCE loss of CLIP between images and captions.
- ``sigmoid_contrastive_loss``: SigLIP's pairwise sigmoid loss, with the model's learned bias.
- ``build_objective(cfg, class_weights)``: the weighted sum selected by ``cfg.loss_function``.

Every loss is computed in (at least) float32, whatever the precision of the model.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import TailCLIPError

LOSS_NAMES = ("clip", "bal", "asl")


class ContrastiveLossError(TailCLIPError, ValueError):
    """``contrastive`` asks for a loss the backbone cannot compute."""


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 logits go to float32; float64 stays float64 (gradient checks run in it).
    return x.to(torch.promote_types(x.dtype, torch.float32))


def similarity_logits(logit_scale: torch.Tensor, emb: torch.Tensor, other_emb: torch.Tensor) -> torch.Tensor:
    """``logit_scale * emb @ other_emb.T`` [N, M] in (at least) float32, also under autocast.

    In bf16 a cosine of ~0.25 is rounded to a multiple of 2^-10, which a logit scale of 100
    turns into steps of ~0.1 between logits: enough to reorder close classes. The matmul is
    small ([N, D] x [D, C or N]), so float32 costs nothing measurable.
    """
    with torch.autocast(device_type=emb.device.type, enabled=False):
        return _at_least_float32(logit_scale) * _at_least_float32(emb) @ _at_least_float32(other_emb).T


def _check_focusing_settings(gamma_neg: float, gamma_pos: float, clip, eps: float) -> None:
    if gamma_neg < 0 or gamma_pos < 0:
        raise ValueError(f"gamma_neg and gamma_pos must be >= 0, got {gamma_neg} and {gamma_pos}")
    if clip is not None and not 0 <= clip < 1:
        raise ValueError(f"clip (probability margin) must be in [0, 1), got {clip}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")


def _check_logits_and_targets(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [batch, classes], got {tuple(logits.shape)}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} does not match logits shape {tuple(logits.shape)}"
        )


def asymmetric_loss(probs, pos_targets, neg_targets, gamma_pos, gamma_neg, clip, eps,
                    pos_factor=None) -> torch.Tensor:
    """Mean over all entries of the asymmetric loss, given probabilities ``probs`` [B, C].

    ``pos_targets`` (t) weight log(p) and ``neg_targets`` (u) weight log(q) with the shifted
    negative probability q = min(1 - p + clip, 1); ``pos_factor`` multiplies the positive term.
    The focusing weight (1 - p t - q u) ** (gamma_pos t + gamma_neg u) keeps its gradient.
    """
    neg_probs = 1 - probs
    if clip is not None and clip > 0:
        neg_probs = (neg_probs + clip).clamp(max=1)
    loss = pos_targets * torch.log(probs.clamp(min=eps))
    if pos_factor is not None:
        loss = loss * pos_factor
    loss = loss + neg_targets * torch.log(neg_probs.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        # The base is >= 0 except with smoothed targets on a negative whose p < clip
        # (t = a / C > 0 and q = 1, base = -p a / C): a fractional power of it is NaN (an
        # integer one a ~1e-15 value of either sign). Clamping at 0 changes nothing
        # wherever the base is already >= 0.
        base = (1 - probs * pos_targets - neg_probs * neg_targets).clamp(min=0)
        loss = loss * torch.pow(base, gamma_pos * pos_targets + gamma_neg * neg_targets)
    return -loss.mean()


def normalise_by_max(logits: torch.Tensor) -> torch.Tensor:
    """``logits / max(logits)`` over the whole tensor, as in the paper.

    Where max(logits) <= 0 that division would flip signs or divide by zero, so the logits
    are divided by max(|logits|) instead (and left as they are when all are zero).
    """
    largest = logits.max()
    scale = torch.where(largest > 0, largest, logits.abs().max())
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return logits / scale


class BalancedAsymmetricLoss(nn.Module):
    """Balanced Asymmetric Loss (BAL) of TailCLIP on class logits [B, C].

    With z = logits / max(logits) (see ``normalise_by_max`` for max <= 0), p = sigmoid(z),
    q = min(1 - p + clip, 1), smoothed positives t = (1 - a) y + a / C (when a > 0, else y),
    unsmoothed negatives u = 1 - y and class weights w:

        L = -mean over B*C of  (1 - p t - q u) ** (gamma_pos t + gamma_neg u)
                               * [ (w + 1) t log(max(p, eps)) + u log(max(q, eps)) ]

    The focusing base is clamped at 0 (it can only be negative with label smoothing).
    ``class_weights`` is a buffer (follows ``.to(device)``, not saved in the state dict);
    ``forward`` may be given weights that replace it for that call.
    Targets must be binary (not checked, to avoid a device synchronisation).
    """

    def __init__(self, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8, class_weights=None,
                 label_smoothing=0.0):
        super().__init__()
        _check_focusing_settings(gamma_neg, gamma_pos, clip, eps)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps
        self.label_smoothing = label_smoothing
        if class_weights is not None:
            class_weights = self._checked_weights(class_weights).float()
        self.register_buffer("class_weights", class_weights, persistent=False)

    @staticmethod
    def _checked_weights(class_weights, num_classes=None) -> torch.Tensor:
        class_weights = torch.as_tensor(class_weights)
        if class_weights.dim() != 1:
            raise ValueError(f"class_weights must be 1-D, got shape {tuple(class_weights.shape)}")
        if num_classes is not None and class_weights.numel() != num_classes:
            raise ValueError(
                f"class_weights has {class_weights.numel()} entries but the logits have "
                f"{num_classes} classes"
            )
        return class_weights

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                class_weights: torch.Tensor = None) -> torch.Tensor:
        _check_logits_and_targets(logits, targets)
        logits = _at_least_float32(logits)
        targets = targets.to(logits.dtype)
        num_classes = logits.shape[1]
        weights = self.class_weights if class_weights is None else class_weights
        if weights is not None:
            weights = self._checked_weights(weights, num_classes).to(logits)

        pos_targets = targets
        if self.label_smoothing > 0:
            pos_targets = (1 - self.label_smoothing) * targets + self.label_smoothing / num_classes
        probs = torch.sigmoid(normalise_by_max(logits))
        return asymmetric_loss(
            probs, pos_targets, 1 - targets, self.gamma_pos, self.gamma_neg, self.clip, self.eps,
            pos_factor=None if weights is None else weights + 1,
        )


class AsymmetricLoss(nn.Module):
    """Asymmetric Loss (Ridnik et al., ICCV 2021) on raw logits [B, C].

    p = sigmoid(logits), shifted probability p_m = max(p - clip, 0) on negatives:
    L = -mean over B*C of [ y (1 - p) ** gamma_pos log(p) + (1 - y) p_m ** gamma_neg log(1 - p_m) ].
    The paper (and its code) sums over classes; we take the mean over all B*C entries so that
    the term is on the same scale as ``BalancedAsymmetricLoss`` (as the TailCLIP code does).
    """

    def __init__(self, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8):
        super().__init__()
        _check_focusing_settings(gamma_neg, gamma_pos, clip, eps)
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_logits_and_targets(logits, targets)
        logits = _at_least_float32(logits)
        targets = targets.to(logits.dtype)
        return asymmetric_loss(
            torch.sigmoid(logits), targets, 1 - targets, self.gamma_pos, self.gamma_neg,
            self.clip, self.eps,
        )


def clip_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor,
                          logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric contrastive loss for L2-normalised embeddings [B, D].

    ``logit_scale`` is the multiplier itself (already exponentiated). Logits are
    logit_scale * image_emb @ text_emb.T; the loss is the mean of the cross-entropies over
    rows and over columns with targets 0..B-1 (duplicate captions stay negatives).
    """
    if image_emb.dim() != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image and text embeddings must both be [batch, dim], got "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    logits = similarity_logits(logit_scale, image_emb, text_emb)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def sigmoid_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor,
                             logit_scale: torch.Tensor, logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al., ICCV 2023) for L2-normalised embeddings [B, D].

    With logits z = logit_scale * image_emb @ text_emb.T + logit_bias and labels +1 on the
    diagonal (an image and its caption), -1 elsewhere: L = -sum(log sigmoid(label * z)) / B.
    Every pair is an independent binary problem, so the loss of a gathered global batch is
    that of one process holding it.
    """
    if image_emb.dim() != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image and text embeddings must both be [batch, dim], got "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    logits = similarity_logits(logit_scale, image_emb, text_emb) + _at_least_float32(logit_bias)
    labels = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / logits.shape[0]


class TailCLIPObjective(nn.Module):
    """Sum of the selected loss terms; the BAL/ASL terms are multiplied by ``asl_mul``.

    Call with the embeddings, the (exponentiated) logit scale, the class logits and the
    targets; returns ``{"loss": total, "loss_clip": ..., "loss_bal": ..., "loss_asl": ...}``
    (only the selected terms, each before its ``asl_mul`` factor). ``class_weights`` given
    to ``forward`` replace BAL's own for that call; both are ignored unless
    ``use_class_weights``. ``contrastive`` is the "clip" term, "softmax" (CLIP) or "sigmoid"
    (SigLIP, which needs the model's ``logit_bias``).
    """

    def __init__(self, loss_function, asl_mul=1.0, bal=None, asl=None, use_class_weights=True,
                 contrastive="softmax"):
        super().__init__()
        self.loss_function = tuple(loss_function)
        self.contrastive = contrastive
        self.asl_mul = asl_mul
        self.bal = bal
        self.asl = asl
        self.use_class_weights = use_class_weights

    @property
    def uses_logit_bias(self) -> bool:
        return "clip" in self.loss_function and self.contrastive == "sigmoid"

    def forward(self, image_emb, caption_emb, logit_scale, logits, targets, class_weights=None,
                logit_bias=None):
        terms = {}
        total = 0
        for name in self.loss_function:
            if name == "clip":
                if self.contrastive == "sigmoid":
                    term = sigmoid_contrastive_loss(image_emb, caption_emb, logit_scale, logit_bias)
                else:
                    term = clip_contrastive_loss(image_emb, caption_emb, logit_scale)
                total = total + term
            else:
                if name == "bal":
                    term = self.bal(logits, targets,
                                    class_weights if self.use_class_weights else None)
                else:
                    term = self.asl(logits, targets)
                total = total + self.asl_mul * term
            terms[f"loss_{name}"] = term
        return {"loss": total, **terms}


def contrastive_kind(cfg, has_logit_bias: bool) -> str:
    """The "clip" term ``cfg.contrastive`` asks for: "auto" is the backbone's own pretraining
    objective, "sigmoid" for a model with a learned logit bias (SigLIP), else "softmax"."""
    if cfg.contrastive == "auto":
        return "sigmoid" if has_logit_bias else "softmax"
    if cfg.contrastive == "sigmoid" and not has_logit_bias:
        raise ContrastiveLossError(
            f"contrastive = 'sigmoid' needs a backbone with a learned logit bias (a SigLIP model), "
            f"and {cfg.model_name!r} has none; set contrastive = 'softmax' or 'auto'")
    return cfg.contrastive


def build_objective(cfg, class_weights=None, has_logit_bias: bool = False) -> TailCLIPObjective:
    """The objective selected by ``cfg.loss_function`` (a list of "clip", "bal", "asl").

    Uses ``cfg.asl_mul``, ``asl_gamma_neg``, ``asl_gamma_pos``, ``asl_clip``, ``asl_eps``,
    ``label_smoothing``, ``use_weighted_loss`` (``class_weights`` [C] enter BAL only when it
    is true) and ``contrastive`` (``has_logit_bias``: whether the backbone has one).
    """
    names = cfg.loss_function
    if isinstance(names, str) or not names:
        raise ValueError(f"loss_function must be a non-empty list of {list(LOSS_NAMES)}, got {names!r}")
    for name in names:
        if name not in LOSS_NAMES:
            raise ValueError(f"unknown loss_function entry {name!r}; known: {list(LOSS_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"loss_function lists a term twice: {list(names)}")

    focusing = dict(gamma_neg=cfg.asl_gamma_neg, gamma_pos=cfg.asl_gamma_pos, clip=cfg.asl_clip,
                    eps=cfg.asl_eps)
    bal = asl = None
    if "bal" in names:
        bal = BalancedAsymmetricLoss(
            **focusing,
            class_weights=class_weights if cfg.use_weighted_loss else None,
            label_smoothing=cfg.label_smoothing,
        )
    if "asl" in names:
        asl = AsymmetricLoss(**focusing)
    return TailCLIPObjective(names, cfg.asl_mul, bal=bal, asl=asl,
                             use_class_weights=cfg.use_weighted_loss,
                             contrastive=contrastive_kind(cfg, has_logit_bias))
