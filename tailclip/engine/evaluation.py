"""Evaluation of a split: batched scoring of the test images against the class prompts, the
loss and the metrics, gathered across processes under torchrun; and how a result reads."""
import dataclasses

import torch

from tailclip.engine.distributed import gather_eval, reduce_mean
from tailclip.engine.precision import autocast
from tailclip.errors import TailCLIPError
from tailclip.losses import TailCLIPObjective
from tailclip.metrics import evaluate, scores_from_logits
from tailclip.model import TailCLIP
from tailclip.thresholds import DecisionScore, decision_score, decision_values, decisions, scalar_metrics
from tailclip.wording import percent


class NonFiniteScoresError(TailCLIPError):
    """Scores that are NaN or infinite: the model's weights or activations diverged."""


@dataclasses.dataclass
class Evaluation:
    """Result of `evaluate_model`: mean loss, ``evaluate`` metrics, the decision metrics the
    model's `DecisionScore` supports (`tailclip.thresholds.decisions`), that score's values
    (float64) and the raw outputs (CPU)."""
    loss: float
    metrics: dict
    decisions: dict
    decision_score: DecisionScore
    decision_values: torch.Tensor
    scores: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    image_emb: torch.Tensor | None = None


def _encode_in_chunks(encode, tokens: torch.Tensor, chunk: int, device) -> torch.Tensor:
    return torch.cat([encode(tokens[i:i + chunk].to(device)) for i in range(0, len(tokens), chunk)])


@torch.no_grad()
def evaluate_model(model: TailCLIP, objective: TailCLIPObjective, batches, caption_tokens: torch.Tensor,
                   device: torch.device, precision: str, groups=None, keep_embeddings: bool = False,
                   chunk: int = 256, score: DecisionScore | None = None) -> Evaluation:
    """Score a split: batched, the class prompts encoded once, scores kept on the device and
    moved to the CPU in one transfer at the end; the loss is ``objective``'s. The decisions
    are on ``score`` (default: that of a model trained with the objective's terms).

    ``batches`` yields device ``(images, targets, caption_tokens, indices)``;
    ``caption_tokens`` are the split's caption token ids [N, L], needed for the contrastive
    term of the loss: each distinct caption is encoded once (test captions repeat a lot).
    With several processes, ``batches`` is this process's share of the single-process
    batches (``build_split_batches``): the outputs of all processes are gathered in dataset
    order, and every process returns the single-process loss, scores and metrics.
    """
    model.eval()
    with autocast(precision, device):
        label_emb = model.encode_labels()
        if objective.uses_captions:
            distinct, caption_of_image = torch.unique(caption_tokens, dim=0, return_inverse=True)
            caption_emb = _encode_in_chunks(model.encode_texts, model.trim_text_padding(distinct), chunk, device)
            caption_of_image = caption_of_image.to(device)
    loss_sum = torch.zeros((), device=device)
    # Empty first entries: with several processes, one may have no batch at all.
    scores, logits_of, targets = ([torch.empty(0, label_emb.shape[0], device=device)] for _ in range(3))
    embeddings, indices = [torch.empty(0, label_emb.shape[1], device=device)], [torch.empty(0, dtype=torch.long)]
    for images, batch_targets, _, index in batches:
        with autocast(precision, device):
            image_emb = model.encode_images(images)
            batch_caption_emb = caption_emb[caption_of_image[index.to(device)]] if objective.uses_captions else None
            outputs = model.objective_inputs(image_emb, batch_caption_emb, label_emb)
            loss = objective(**outputs, targets=batch_targets)["loss"]
        loss_sum += loss.float() * batch_targets.shape[0]
        scores.append(scores_from_logits(outputs["logits"].float(), model.score_kind))
        logits_of.append(outputs["logits"].float())
        targets.append(batch_targets)
        indices.append(index)
        if keep_embeddings:
            embeddings.append(image_emb.float())
    loss = reduce_mean(loss_sum.item(), count=sum(len(index) for index in indices))
    outputs = ([torch.cat(scores), torch.cat(logits_of), torch.cat(targets)]
               + ([torch.cat(embeddings)] if keep_embeddings else []))
    _, scores, logits, targets, *image_emb = (t.cpu() for t in gather_eval(torch.cat(indices), *outputs))
    nonfinite = int((~torch.isfinite(scores)).any(dim=1).sum())
    if nonfinite:
        raise NonFiniteScoresError(f"non-finite scores (NaN or inf) for {nonfinite} of {len(scores)} images")
    score = decision_score(objective.loss_function) if score is None else score
    values = decision_values(score, logits, model.clip_model.logit_scale.exp().item())
    return Evaluation(loss=loss, metrics=evaluate(scores, targets, groups),
                      decisions=decisions(values, targets, score, groups), decision_score=score,
                      decision_values=torch.from_numpy(values), scores=scores, logits=logits, targets=targets,
                      image_emb=image_emb[0] if keep_embeddings else None)


def val_record(evaluation: Evaluation) -> dict:
    """The scalars of a validation: loss, mAP and AUROC, and the decision metrics the model
    supports (no tag at the threshold 0.5 for a model without a probability)."""
    return {"val/loss": evaluation.loss, **{f"val/{k}": v for k, v in scalar_metrics(evaluation.metrics).items()},
            **{f"val/{k}": v for k, v in scalar_metrics(evaluation.decisions).items()}}


def val_line(record: dict) -> str:
    def pct(key):
        return percent(record.get(key))
    return (f"val loss {record['val/loss']:.4f}  val mAP {pct('val/mAP')} "
            f"(head {pct('val/mAP_head')}, medium {pct('val/mAP_medium')}, tail {pct('val/mAP_tail')})  "
            f"AUROC {pct('val/AUROC')}")

