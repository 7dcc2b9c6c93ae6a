"""One epoch's training metrics, summed as the steps go: the loss and its terms per image,
and the scores for the training mAP. A checkpoint taken in the middle of an epoch keeps it
(`state_dict`), so a resumed epoch reports what an unbroken one would."""
import torch

from tailclip.metrics import evaluate, scores_from_logits


class EpochMeter:
    """One epoch's loss sums and training scores, kept on the device (no per-step sync)."""

    def __init__(self):
        self.loss_sums: dict[str, torch.Tensor] = {}
        self.images = 0
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, out: dict, targets: torch.Tensor, score_kind: str) -> None:
        # With several processes, the whole global batch (`GlobalBatchObjective`'s outputs):
        # every process keeps the single-process meter.
        logits, targets = out.get("global_logits", out["logits"]), out.get("global_targets", targets)
        count = targets.shape[0]
        for name, value in out.items():
            if name.startswith("loss"):
                self.loss_sums[name] = self.loss_sums.get(name, 0) + value.detach().float() * count
        self.images += count
        self.scores.append(scores_from_logits(logits.detach().float(), score_kind))
        self.targets.append(targets)

    def state_dict(self) -> dict:
        return {"loss_sums": {k: v.cpu() for k, v in self.loss_sums.items()}, "images": self.images,
                "scores": [torch.cat(self.scores).cpu()] if self.scores else [],
                "targets": [torch.cat(self.targets).cpu()] if self.targets else []}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.loss_sums = {k: v.to(device) for k, v in state["loss_sums"].items()}
        self.images = state["images"]
        self.scores = [t.to(device) for t in state["scores"]]
        self.targets = [t.to(device) for t in state["targets"]]

    def summary(self, groups) -> dict:
        """``train/loss`` (and each term) per image, ``train/mAP*`` and ``train/AUROC``."""
        if not self.images:
            return {}
        record = {f"train/{name}": (total / self.images).item() for name, total in self.loss_sums.items()}
        metrics = evaluate(torch.cat(self.scores).cpu(), torch.cat(self.targets).cpu(), groups)
        record.update({f"train/{name}": value for name, value in metrics.items() if name != "AP"})
        return record
