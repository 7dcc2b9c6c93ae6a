"""Training objectives of TailCLIP.

- ``BalancedAsymmetricLoss`` (BAL): the paper's loss on the class logits; an asymmetric loss
  on max-normalised logits, with label smoothing and class weights on the positive term.
- ``AsymmetricLoss`` (ASL, Ridnik et al., ICCV 2021) for ablations.
- Baselines on the class logits: ``BinaryCrossEntropyLoss`` (BCE), ``SigmoidFocalLoss`` (Lin et
  al., ICCV 2017) and ``DistributionBalancedFocalLoss`` (Wu et al., ECCV 2020).
- ``clip_contrastive_loss``: the symmetric InfoNCE loss of CLIP between images and captions.
- ``sigmoid_contrastive_loss``: SigLIP's pairwise sigmoid loss, with the model's learned bias.
- ``TailCLIPObjective``: the weighted sum of the selected terms, computed from a model's
  outputs (``tailclip.factory.build_objective`` builds it from a config).

Every loss is computed in (at least) float32, whatever the precision of the model. Settings
are taken as given: the config checks their ranges (``tailclip.config``).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import at_least_float32, similarity_logits


def _check_logits_and_targets(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [batch, classes], got {tuple(logits.shape)}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} does not match logits shape {tuple(logits.shape)}"
        )


def _checked_float_inputs(logits: torch.Tensor, targets: torch.Tensor):
    """(logits, targets) checked for shape, in (at least) float32 and the logits' dtype."""
    _check_logits_and_targets(logits, targets)
    logits = at_least_float32(logits)
    return logits, targets.to(logits.dtype)


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
    ``class_weights`` is a buffer (follows ``.to(device)``, not saved in the state dict).
    Targets must be binary (not checked, to avoid a device synchronisation).
    """

    def __init__(self, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8, class_weights=None,
                 label_smoothing=0.0):
        super().__init__()
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

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _checked_float_inputs(logits, targets)
        num_classes = logits.shape[1]
        weights = self.class_weights
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
    Ridnik et al. sum over the batch and classes, and so did the authors' code in one logged run;
    their later code, which this term equals, takes the mean over all B*C entries, on the same
    scale as ``BalancedAsymmetricLoss``.
    """

    def __init__(self, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8):
        super().__init__()
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _checked_float_inputs(logits, targets)
        return asymmetric_loss(
            torch.sigmoid(logits), targets, 1 - targets, self.gamma_pos, self.gamma_neg,
            self.clip, self.eps,
        )


class BinaryCrossEntropyLoss(nn.Module):
    """Binary cross-entropy on raw logits [B, C], the mean over all B*C entries."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(*_checked_float_inputs(logits, targets))


def _focal_factor(cross_entropy: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 - p_t) ** gamma, where p_t = exp(-cross_entropy) is the probability of the target."""
    return (-torch.expm1(-cross_entropy)) ** gamma


class SigmoidFocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017) on
    raw logits [B, C]: with p_t the probability of the target (p on positives, 1 - p on
    negatives) and alpha_t = alpha on positives, 1 - alpha on negatives,

        L = mean over B*C of  -alpha_t (1 - p_t) ** gamma log(p_t).

    The defaults gamma = 2, alpha = 0.25 are the paper's best setting (its Table 1a), also
    the defaults of torchvision's ``sigmoid_focal_loss``; gamma = 0, alpha = 0.5 is half BCE.
    """

    def __init__(self, gamma=2.0, alpha=0.25):
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _checked_float_inputs(logits, targets)
        cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        alpha_t = self.alpha * targets + (1 - self.alpha) * (1 - targets)
        return (alpha_t * _focal_factor(cross_entropy, self.gamma) * cross_entropy).mean()


# LMPT's DB-focal settings for its two benchmarks (richard-peng-xia/LMPT, lmpt/train.py):
# they differ only in the threshold mu and the negative scale lambda.
DBFOCAL_DATASET_DEFAULTS = {
    "voc_mlt": {"mu": 0.3, "neg_scale": 5.0},
    "coco_mlt": {"mu": 0.2, "neg_scale": 2.0},
}


class DistributionBalancedFocalLoss(nn.Module):
    """Distribution-balanced focal loss (Wu et al., "Distribution-Balanced Loss for
    Multi-Label Classification in Long-Tailed Datasets", ECCV 2020) on raw logits [B, C].

    ``class_priors`` [C] are the training split's class frequencies p_c = n_c / N (n_c
    training images contain class c, of N). Three parts:

    - Re-balanced weighting. Class-aware sampling draws a class uniformly, then one of its
      images: class c is drawn with P^C(c) = 1/C and image k with P^I(k) = (1/C) sum over
      its classes j of 1/n_j, so that an image with frequent co-occurring classes is
      over-sampled. The weight of every entry (k, c), positives and negatives alike, is the
      smoothed ratio r_kc = (1/n_c) / sum_{j in y_k} 1/n_j mapped to
      r_hat = alpha + sigmoid(beta (r_kc - mu)). (An image without labels gets r = inf,
      r_hat = alpha + 1.)
    - Negative-tolerant regularisation. The logit gets a class-specific bias
      b_c = (kappa / lambda) log(p_c / (1 - p_c)); negatives' logits are then multiplied by
      lambda and their loss by 1 / lambda, so that a negative's loss is
      (1 / lambda) log(1 + exp(lambda z + kappa log(p_c / (1 - p_c)))). (Dividing the bias by
      lambda, so that lambda cancels on negatives, follows the authors' code.)
    - Focusing: with z' the regularised logit and p_t = sigmoid(+-z') the probability of the
      target, each entry is multiplied by scale * (1 - p_t) ** gamma.

        L = mean over B*C of  scale * r_hat * (1 / lambda if negative) * (1 - p_t) ** gamma
                              * BCE(z', y)

    Defaults (all from the authors' code, wutong16/DistributionBalancedLoss, as LMPT uses it
    for VOC-LT and COCO-LT): alpha = 0.1, beta = 10, kappa = 0.05, gamma = 2, scale = 2
    (their ``balance_param``); mu = 0.2 and lambda = 2 are LMPT's COCO-LT values, and
    ``DBFOCAL_DATASET_DEFAULTS`` holds its VOC-LT ones (mu = 0.3, lambda = 5). LMPT's copy of
    the loss averages the cross-entropy over the batch before the focal factor (its
    ``binary_cross_entropy`` ignores ``reduction="none"``); this is the published,
    per-entry formula, as in the authors' code.
    """

    def __init__(self, class_priors, alpha=0.1, beta=10.0, mu=0.2, neg_scale=2.0, kappa=0.05,
                 gamma=2.0, scale=2.0):
        super().__init__()
        self.alpha, self.beta, self.mu = alpha, beta, mu
        self.neg_scale, self.gamma, self.scale = neg_scale, gamma, scale
        inverse_priors = logit_bias = None
        if class_priors is not None:  # None: a model rebuilt to predict, which needs no loss
            priors = torch.as_tensor(class_priors, dtype=torch.float64)
            if priors.dim() != 1 or not ((priors > 0) & (priors < 1)).all():
                raise ValueError("class_priors must be 1-D with every class frequency in (0, 1) (the "
                                 f"bias log(p / (1 - p)) is infinite otherwise), got {priors.tolist()}")
            # Only ratios of 1/n_c enter the weights, so 1/p_c serves as well as 1/n_c.
            inverse_priors = 1 / priors
            logit_bias = kappa / neg_scale * torch.log(priors / (1 - priors))
        self.register_buffer("inverse_priors", inverse_priors, persistent=False)
        self.register_buffer("logit_bias", logit_bias, persistent=False)

    def rebalancing_weights(self, targets: torch.Tensor) -> torch.Tensor:
        """r_hat [B, C]: the smoothed ratio of class-level to instance-level sampling probability."""
        if self.inverse_priors is None:
            raise ValueError("the 'dbfocal' loss needs the training split's class frequencies "
                             "(class_priors), and was built without them")
        inverse = self.inverse_priors.to(targets.dtype)
        ratio = inverse / (targets @ inverse).unsqueeze(1)
        return self.alpha + torch.sigmoid(self.beta * (ratio - self.mu))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _checked_float_inputs(logits, targets)
        positive = targets > 0
        weights = self.rebalancing_weights(targets)
        weights = torch.where(positive, weights, weights / self.neg_scale)
        shifted = logits + self.logit_bias.to(logits.dtype)
        regularised = torch.where(positive, shifted, self.neg_scale * shifted)
        cross_entropy = F.binary_cross_entropy_with_logits(regularised, targets, reduction="none")
        focal = _focal_factor(cross_entropy, self.gamma)
        return (self.scale * weights * focal * cross_entropy).mean()


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
    logits = similarity_logits(logit_scale, image_emb, text_emb) + at_least_float32(logit_bias)
    labels = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / logits.shape[0]


class ContrastiveLoss(nn.Module):
    """The contrastive term between images and their captions: CLIP's softmax loss
    (``kind = "softmax"``) or SigLIP's sigmoid loss (``"sigmoid"``, with the model's logit bias)."""

    def __init__(self, kind: str = "softmax"):
        super().__init__()
        self.kind = kind

    def forward(self, image_emb, caption_emb, logit_scale, logit_bias=None) -> torch.Tensor:
        if self.kind == "sigmoid":
            return sigmoid_contrastive_loss(image_emb, caption_emb, logit_scale, logit_bias)
        return clip_contrastive_loss(image_emb, caption_emb, logit_scale)


class TailCLIPObjective(nn.Module):
    """The sum of ``terms`` ({name: loss}, summed in that order): a `ContrastiveLoss`, or a
    loss ``(logits, targets) -> scalar`` on the class logits, multiplied by ``asl_mul``.

    Call with the embeddings, the (exponentiated) logit scale, the class logits and the
    targets, as a model gives them: ``objective(**model.objective_inputs(...), targets=targets)``
    (`TailCLIP.forward` returns them for a training step). Returns ``{"loss": total,
    "loss_<name>": ...}`` for each term, before its ``asl_mul`` factor.
    """

    def __init__(self, terms: dict[str, nn.Module], asl_mul: float = 1.0):
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.asl_mul = asl_mul

    @property
    def loss_function(self) -> tuple[str, ...]:
        """The names of its terms, in order (the config's ``loss_function``)."""
        return tuple(self.terms)

    @property
    def uses_captions(self) -> bool:
        """Whether a term needs the captions' embeddings (the contrastive term)."""
        return any(isinstance(term, ContrastiveLoss) for term in self.terms.values())

    @property
    def uses_logit_bias(self) -> bool:
        return any(isinstance(term, ContrastiveLoss) and term.kind == "sigmoid" for term in self.terms.values())

    def forward(self, image_emb, caption_emb, logit_scale, logits, targets, logit_bias=None):
        values = {}
        total = 0
        for name, term in self.terms.items():
            if isinstance(term, ContrastiveLoss):
                value = term(image_emb, caption_emb, logit_scale, logit_bias)
                total = total + value
            else:
                value = term(logits, targets)
                total = total + self.asl_mul * value
            values[f"loss_{name}"] = value
        return {"loss": total, **values}

