"""TailCLIP: a CLIP model fine-tuned end to end with class prompts as the classifier.

Class logits are ``logit_scale.exp() * cos(image, class prompt)`` (the scale is trained and
not clamped, as in the paper). The model is the encoders and the class logits; the loss is
the objective beside it (`tailclip.losses.TailCLIPObjective`, built by
``tailclip.factory.build_objective``), applied to the model's outputs.
"""
import torch
import torch.nn as nn

from clip import trim_padding


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 values go to float32; float64 stays float64 (gradient checks run in it).
    return x.to(torch.promote_types(x.dtype, torch.float32))


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 features (autocast) are normalised in float32, as the logits are computed.
    x = at_least_float32(x)
    return x / x.norm(dim=-1, keepdim=True)


def similarity_logits(logit_scale: torch.Tensor, emb: torch.Tensor, other_emb: torch.Tensor) -> torch.Tensor:
    """``logit_scale * emb @ other_emb.T`` [N, M] in (at least) float32, also under autocast:
    the class logits, and the contrastive loss's logits between images and captions.

    In bf16 a cosine of ~0.25 is rounded to a multiple of 2^-10, which a logit scale of 100
    turns into steps of ~0.1 between logits: enough to reorder close classes. The matmul is
    small ([N, D] x [D, C or N]), so float32 costs nothing measurable.
    """
    with torch.autocast(device_type=emb.device.type, enabled=False):
        return at_least_float32(logit_scale) * at_least_float32(emb) @ at_least_float32(other_emb).T


class TailCLIP(nn.Module):
    """Wraps a ``clip.CLIP`` model with the tokenised class prompts [C, context_length].

    ``label_embeddings``: "per_step" (the published code) encodes the class prompts in
    every training step, with gradient; "per_epoch" (the paper's first version) uses the
    embeddings cached by ``refresh_label_embeddings()``, which the training loop calls at the
    start of each epoch (the first forward fills the cache if it is empty). Evaluation
    (``predict_logits``) always encodes the prompts with the current weights. ``score`` is the
    kind of ranking score of its logits (`tailclip.metrics.scores_from_logits`).
    All CLIP parameters are trained (full fine-tuning).
    """

    def __init__(self, clip_model: nn.Module, label_tokens: torch.Tensor, label_embeddings: str = "per_step",
                 score: str = "softmax"):
        super().__init__()
        if label_tokens.dim() != 2:
            raise ValueError(f"label_tokens must be [classes, context_length], got {tuple(label_tokens.shape)}")
        self.clip_model = clip_model
        for parameter in self.clip_model.parameters():
            parameter.requires_grad_(True)
        self.label_embedding_mode = label_embeddings
        self.score_kind = score
        # A text tower that reads the padding (SigLIP's pools the last position) says so.
        self.trims_text_padding = getattr(clip_model, "trims_text_padding", True)
        # Derived from the class names and the weights: not part of a checkpoint.
        self.register_buffer("label_tokens", self.trim_text_padding(label_tokens), persistent=False)
        self.register_buffer("cached_label_emb", None, persistent=False)

    @property
    def num_classes(self) -> int:
        return self.label_tokens.shape[0]

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """The backbone's learned logit bias (SigLIP), or None."""
        return getattr(self.clip_model, "logit_bias", None)

    def trim_text_padding(self, tokens: torch.Tensor) -> torch.Tensor:
        """``clip.trim_padding(tokens)`` where the text tower allows it, else ``tokens``."""
        return trim_padding(tokens) if self.trims_text_padding else tokens

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings [N, D]."""
        return l2_normalise(self.clip_model.encode_image(images))

    def encode_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings [N, D] of token ids [N, context_length]."""
        return l2_normalise(self.clip_model.encode_text(tokens))

    def encode_labels(self) -> torch.Tensor:
        """L2-normalised embeddings [C, D] of the class prompts, with the current weights."""
        return self.encode_texts(self.label_tokens)

    @torch.no_grad()
    def refresh_label_embeddings(self) -> None:
        """Encode the class prompts without gradient and cache them ("per_epoch" mode)."""
        self.cached_label_emb = self.encode_labels()

    def class_logits(self, image_emb: torch.Tensor, label_emb: torch.Tensor) -> torch.Tensor:
        """``logit_scale.exp() * image_emb @ label_emb.T`` [N, C], in float32 under autocast."""
        return similarity_logits(self.clip_model.logit_scale.exp(), image_emb, label_emb)

    def _training_label_embeddings(self) -> torch.Tensor:
        if self.label_embedding_mode == "per_step":
            return self.encode_labels()
        if self.cached_label_emb is None:
            self.refresh_label_embeddings()
        return self.cached_label_emb

    def forward(self, images: torch.Tensor, caption_tokens: torch.Tensor | None = None) -> dict:
        """A training step's outputs, the objective's inputs (`objective_inputs`), with the
        class prompts' embeddings of ``label_embeddings``. ``caption_tokens`` [N, L] are
        encoded only when given (the objective's ``uses_captions``)."""
        image_emb = self.encode_images(images)
        caption_emb = None if caption_tokens is None else self.encode_texts(caption_tokens)
        return self.objective_inputs(image_emb, caption_emb, self._training_label_embeddings())

    def objective_inputs(self, image_emb: torch.Tensor, caption_emb: torch.Tensor | None,
                         label_emb: torch.Tensor) -> dict:
        """What the objective takes besides the targets: ``image_emb`` [N, D], ``caption_emb``
        [N, D] (or None), the class ``logits`` [N, C], the exponentiated ``logit_scale`` and
        the backbone's ``logit_bias`` (or None). Training and evaluation both compute a
        batch's loss as ``objective(**objective_inputs, targets=targets)``."""
        return {"image_emb": image_emb, "caption_emb": caption_emb,
                "logits": self.class_logits(image_emb, label_emb),
                "logit_scale": self.clip_model.logit_scale.exp(), "logit_bias": self.logit_bias}

    def predict_logits(self, images: torch.Tensor, label_emb: torch.Tensor = None) -> torch.Tensor:
        """Class logits [N, C] for evaluation; pass ``label_emb = encode_labels()`` to encode
        the prompts once for many batches."""
        if label_emb is None:
            label_emb = self.encode_labels()
        return self.class_logits(self.encode_images(images), label_emb)
