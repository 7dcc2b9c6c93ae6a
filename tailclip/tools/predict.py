"""Prediction on new images from a checkpoint alone (the library side of ``predict.py``).

A training checkpoint carries the backbone name, the config, the class names and the class
prompts, so neither the training data nor a config file is needed: ``load_predictor`` rebuilds
the model, ``predict_files`` scores image files in batches and keeps going past files that
cannot be decoded, ``write_results`` saves the outcome as CSV or JSON.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from tailclip.data.datasets import UnreadableImageError, load_image
from tailclip.data.transforms import build_transform
from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.distributed import resolve_device
from tailclip.engine.files import write_json, write_text
from tailclip.engine.precision import autocast, resolve_precision
from tailclip.engine.saved_model import model_from_checkpoint
from tailclip.errors import TailCLIPError
from tailclip.metrics import scores_from_logits
from tailclip.thresholds import (
    PROBABILITY,
    DecisionScore,
    decision_score,
    decision_values,
    no_threshold_reason,
    selected_classes,
)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm"})
OUTPUT_FORMATS = (".csv", ".json")


class OutputFormatError(TailCLIPError, ValueError):
    """``--output`` names a file whose extension is not a format ``write_results`` writes."""


class NoProbabilityError(TailCLIPError):
    """A fixed threshold asked of a model whose training made no probability."""


@dataclass
class Result:
    """The outcome for one file: class scores [C] (float32, CPU) and the values [C] of the
    model's decision score that thresholds select by (`tailclip.thresholds.DecisionScore`,
    float64), or why it was not read."""

    path: str
    scores: torch.Tensor | None = None
    error: str | None = None
    decision_values: torch.Tensor | None = None


class Predictor:
    """A trained TailCLIP ready for inference: ``predictor(images) -> (scores [N, C],
    decision values [N, C])`` (CPU).

    ``transform`` turns a PIL RGB image into the model's input (the config's size and
    normalisation, no flip). Scores are of the config's ``score`` kind, decision values those
    of ``loss_terms``' `DecisionScore` (the probability of a model trained to output one).
    The class prompts are encoded once, at the first call.
    """

    def __init__(self, model, class_names: Sequence[str], transform, device: torch.device,
                 precision: str = "fp32", metadata: dict | None = None, loss_terms=()):
        self.model = model.eval().to(device)
        self.class_names = list(class_names)
        self.transform = transform
        self.device = device
        self.precision = precision
        self.metadata = metadata or {}
        self.loss_terms = tuple(loss_terms)
        self.decision_score: DecisionScore = decision_score(self.loss_terms)
        self.label_emb = None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.precision, self.device):
            if self.label_emb is None:
                self.label_emb = self.model.encode_labels()
            logits = self.model.predict_logits(images.to(self.device), self.label_emb).float().cpu()
        logit_scale = self.model.clip_model.logit_scale.exp().item()
        return (scores_from_logits(logits, self.model.score_kind),
                torch.from_numpy(decision_values(self.decision_score, logits, logit_scale)))

    def check_fixed_threshold(self) -> None:
        """Refuse a fixed threshold where training made no probability to apply it to."""
        reason = no_threshold_reason(self.loss_terms)
        if reason:
            raise NoProbabilityError(f"--threshold: {reason}; rank with --top-k, or pass the thresholds "
                                     "file of test.py --calibrate with --thresholds")


def load_predictor(checkpoint_path: str | Path, device: str = "auto") -> Predictor:
    """A ``Predictor`` from a training checkpoint alone (no data, no config file needed).

    The architecture comes from the checkpoint's config (backbone name, size), the weights
    and class prompts from the checkpoint itself. ``device``: "auto" (CUDA when available),
    "cpu", "cuda" or "cuda:N"; bf16 autocast on CUDA, float32 on the CPU.
    """
    # Before the model is built: a missing GPU fails at once.
    device = resolve_device(device, cpu_hint="--device cpu or --device auto")
    checkpoint = load_checkpoint(checkpoint_path)
    model, cfg = model_from_checkpoint(checkpoint, checkpoint_path)
    metadata = {"checkpoint": str(checkpoint_path), "backbone": cfg.model_name,
                "score": cfg.score, "loss_function": list(cfg.loss_function)}
    return Predictor(model, checkpoint["class_names"],
                     build_transform(cfg.size, train=False, normalize=cfg.normalize), device,
                     resolve_precision("auto", device), metadata, cfg.loss_function)


def find_images(inputs: Iterable[str | Path]) -> tuple[list[Path], list[Result]]:
    """Image files named by ``inputs`` (files, or folders searched recursively) in order.

    Folders contribute files whose extension is in ``IMAGE_EXTENSIONS`` (any case), sorted;
    symbolic links to folders are followed (each folder read once). A file named directly is
    always tried. Returns ``(images, not_read)``, where ``not_read`` holds every input or folder
    entry that is not read, each with the reason (no such file, an extension, a broken link,
    a FIFO, socket or device, a folder reached again through a link), so that the caller can
    report them: nothing is skipped silently.
    """
    images, not_read = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            for path in _folder_files(item, not_read, {}):
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    images.append(path)
                else:
                    not_read.append(Result(str(path), error=f"not an image file "
                                                               f"(extension {path.suffix!r})"))
        elif item.is_file():
            images.append(item)
        else:
            not_read.append(Result(str(item), error=_neither_file_nor_folder(item)))
    return images, not_read


def _folder_files(folder: Path, not_read: list[Result], seen: dict[Path, Path]) -> list[Path]:
    """The files under ``folder`` in sorted order, through links to folders; what is not a
    file goes to ``not_read`` with the reason. ``seen``: each folder read (resolved) and the
    path it was read under, so that a folder reached twice through links (or a link to a
    parent, which would loop) is read once."""
    seen[folder.resolve()] = folder
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            if entry.resolve() in seen:
                not_read.append(Result(str(entry), error=f"the folder {seen[entry.resolve()]} again "
                                                         "(through a symbolic link), read once"))
            else:
                files += _folder_files(entry, not_read, seen)
        elif entry.is_file():
            files.append(entry)
        else:
            not_read.append(Result(str(entry), error=_neither_file_nor_folder(entry)))
    return files


def _neither_file_nor_folder(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return f"a broken symbolic link (to {path.readlink()}, which does not exist)"
    if path.exists():
        return "not a regular file or folder (a FIFO, socket or device)"
    return "no such file or folder"


class ImageFiles(Dataset):
    """Items ``(index, tensor or None, error or None)``; a file that fails to decode gives the
    error text instead of raising, so one bad file never stops a batch."""

    def __init__(self, paths: Sequence[Path], transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image = load_image(self.paths[index])
        except UnreadableImageError as error:
            return index, None, f"cannot read image: {error.__cause__}"
        return index, self.transform(image), None


def collate_readable(items):
    """Batch of ``ImageFiles`` items -> (indices of decoded images, their stacked tensors,
    [(index, error)] of the others)."""
    good = [(index, tensor) for index, tensor, _ in items if tensor is not None]
    bad = [(index, error) for index, tensor, error in items if tensor is None]
    tensors = torch.stack([tensor for _, tensor in good]) if good else None
    return [index for index, _ in good], tensors, bad


def predict_files(predictor, paths: Sequence[Path], batch_size: int = 32,
                  num_workers: int = 0) -> Iterator[Result]:
    """Score image files in batches; yields one ``Result`` per path, in order.

    ``predictor`` maps a batch of transformed images to (scores, decision values)
    (``Predictor``) and has the ``transform`` to apply. Files that cannot be decoded give a
    ``Result`` with ``error``.
    """
    loader = DataLoader(ImageFiles(paths, predictor.transform), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate_readable)
    for indices, images, failures in loader:
        results = {index: Result(str(paths[index]), error=error) for index, error in failures}
        if images is not None:
            for index, scores, values in zip(indices, *predictor(images)):
                results[index] = Result(str(paths[index]), scores=scores, decision_values=values)
        yield from (results[index] for index in sorted(results))


def ranked_classes(result: Result, class_names: Sequence[str], top_k: int,
                   threshold: float | None = None) -> tuple[list[tuple[str, float]], ...]:
    """``(top_k best (class, score) pairs, all (class, probability) pairs with probability
    >= threshold)``, each best first; the probability is `PROBABILITY` (the result's decision
    values, of a model trained to output one), so a threshold may select any number of
    classes. The second list is empty when ``threshold`` is None."""
    def best_first(values: torch.Tensor) -> list[tuple[str, float]]:
        return [(class_names[c], float(values[c]))
                for c in torch.argsort(values, descending=True, stable=True).tolist()]

    above = ([] if threshold is None else
             [pair for pair in best_first(result.decision_values) if pair[1] >= threshold])
    return best_first(result.scores)[:top_k], above


def write_results(path: str | Path, results: Sequence[Result], class_names: Sequence[str],
                  top_k: int, threshold: float | None = None, metadata: dict | None = None,
                  class_thresholds: torch.Tensor | None = None, score: DecisionScore = PROBABILITY) -> Path:
    """Write predictions as CSV or JSON, chosen by the extension of ``path``.

    CSV: one row per file, columns ``path, error, class_1, score_1, ..., class_k, score_k``
    and, with a threshold, ``sigmoid_above_threshold`` (class names joined by ";"), with
    per-class thresholds [C] ``above_class_threshold`` (the classes whose decision value, of
    ``score``, reaches their threshold); a file that could not be read has only ``path`` and
    ``error`` filled in. JSON: ``metadata`` fields, ``threshold_on`` (what ``score`` is) plus
    ``predictions`` (``path``, ``top_k`` list of ``{"class", "score"}``, ``above_threshold``
    list of ``{"class", "probability"}``, ``above_class_threshold`` list of ``{"class",
    <score's name>}``) and ``unreadable`` (``path``, ``error``).
    """
    path = Path(path)
    check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    k = min(top_k, len(class_names))
    if path.suffix.lower() == ".json":
        predictions, unreadable = [], []
        for result in results:
            if result.scores is None:
                unreadable.append({"path": result.path, "error": result.error})
                continue
            top, above = ranked_classes(result, class_names, k, threshold)
            entry = {"path": result.path, "top_k": [{"class": c, "score": s} for c, s in top]}
            if threshold is not None:
                entry["above_threshold"] = [{"class": c, "probability": p} for c, p in above]
            if class_thresholds is not None:
                entry["above_class_threshold"] = [
                    {"class": c, score.name: value}
                    for c, value in selected_classes(result.decision_values, class_names, class_thresholds)]
            predictions.append(entry)
        document = {**(metadata or {}), "top_k": k, "threshold": threshold, "threshold_on": score.meaning,
                    "classes": list(class_names), "predictions": predictions,
                    "unreadable": unreadable}
        return write_json(path, document)
    header = ["path", "error"] + [f"{kind}_{rank}" for rank in range(1, k + 1)
                                  for kind in ("class", "score")]
    header += ["sigmoid_above_threshold"] if threshold is not None else []
    header += ["above_class_threshold"] if class_thresholds is not None else []
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(header)
    for result in results:
        if result.scores is None:
            writer.writerow([result.path, result.error] + [""] * (len(header) - 2))
            continue
        top, above = ranked_classes(result, class_names, k, threshold)
        row = [result.path, ""] + [value for c, s in top for value in (c, f"{s:.6g}")]
        row += [";".join(c for c, _ in above)] if threshold is not None else []
        if class_thresholds is not None:
            selected = selected_classes(result.decision_values, class_names, class_thresholds)
            row.append(";".join(c for c, _ in selected))
        writer.writerow(row)
    return write_text(path, table.getvalue())


def check_output_path(path: str | Path) -> None:
    """Refuse an output file whose format is unknown, before any work is done."""
    if Path(path).suffix.lower() not in OUTPUT_FORMATS:
        raise OutputFormatError(f"--output {path}: unknown format; use a file name ending in "
                         f"{' or '.join(OUTPUT_FORMATS)}")
