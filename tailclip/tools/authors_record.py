"""The paper's authors' own training runs, as they logged them, and which of them a config matches.

``datasets/authors_runs/lm_clip_runs.json`` holds every TensorBoard run of the authors'
repository (its ``README.md`` says where from): the config each run logged at its start
(every value a string, in the authors' option names, which are ours) and per epoch their
twelve scalars as fractions. Their epoch k is the evaluation after k epochs of training, as
ours is; they have no evaluation before training (our epoch 0).

Matching compares the options that change training, as numbers where they are numbers
(``"1e-06"`` is ``1e-6``), and only those that act on both sides: the loss options of the
class-logit term when both train one, a power when its switch is on on both sides. Options
their code does not log but fixes (full fine-tuning from OpenAI's weights, ImageNet
statistics, softmax scores, CLIP's softmax contrastive loss) must hold their value in ours.
Event files copied into several run folders (identical curves) are one run with several names.

Which loss a run trained depends on its code's version, not only on its logged name: their
``"bal"`` always built their Balanced Asymmetric Loss (our ``"bal"``), while their ``"asl"``
built BAL until they split it, then a plain asymmetric loss on the raw logits, summed over the
batch in one run and averaged after (our ``"asl"``; the sum is none of our options).
``THEIR_ASL_SINCE`` dates each version by the event file's time, when its run started;
``AuthorsRun.class_loss`` and ``loss_evidence`` say what a run trained and why.

Options that change the numbers but not what is trained (``NUMERICS_NOTES``: the class
prompts' encoding, the forward pass's precision, TF32) do not keep a run from matching;
``numerics_notes`` names each in which ours ran otherwise than theirs.
"""
import ast
import dataclasses
import functools
import hashlib
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

from tailclip import REPO_ROOT
from tailclip.config import AUTHORS_LOGGED, OPTIONS, Config
from tailclip.errors import TailCLIPError

RECORD_FILE = REPO_ROOT / "datasets" / "authors_runs" / "lm_clip_runs.json"
RECORD_SHA256 = "e1c747ca517f82a703d7011af54b908abb0d2ec4fed943ba53fd4794cb219202"
RECORD_DATASETS = ("voc_mlt", "coco_mlt")
# Their tag names are ours but for the medium classes' group.
AUTHORS_TAGS = {"middle": "medium"}

# The options that change training and that the authors' runs logged, in the order
# differences are listed; and what their code does without logging it, as our options say it.
MATCHED_OPTIONS = tuple(name for name, about in OPTIONS.items() if about.authors == AUTHORS_LOGGED)
AUTHORS_FIXED = {name: about.authors for name, about in OPTIONS.items() if isinstance(about.authors, tuple)}
# Options of the Balanced Asymmetric Loss: they act only where a run trains it.
BAL_OPTIONS = ("asl_gamma_neg", "asl_gamma_pos", "asl_clip", "asl_eps", "label_smoothing",
               "use_weighted_loss", "class_weights_power")
# What their "asl" built from when (an event file's time: when its run started, seconds since
# 1970 UTC). Their commit ea71781 (2024-08-15 10:13 UTC) split it from BAL into a plain
# asymmetric loss on the raw logits (no division by the maximum, no class weights, no
# smoothing) summed over the batch; their commit 4ee61ce (2024-08-18) made it a mean. Runs
# start before the commit that adds their code, so the epoch-1 loss dates each change: the run
# of 1723715814 has the summed scale (batch x classes times the mean's), the next, 47 minutes
# later, the mean's.
THEIR_ASL_SINCE = ((0, "bal", "before their asl was split from BAL"),
                   (1723715814, "asl_sum", "after the split, before the sum became a mean"),
                   (1723718585, "asl", "after the sum became a mean"))
# The losses their runs trained on the class logits, in our term names ("asl_sum": none of ours).
CLASS_LOSSES = {"bal": "BAL", "asl": "the plain asymmetric loss, averaged (our asl)",
                "asl_sum": "the plain asymmetric loss summed over the batch, which no option of ours trains"}
# Their losses that no option of ours trains, with our term that is the same but for them.
UNREPRODUCED_LOSSES = {"asl_sum": "asl"}
# The options of a plain asymmetric loss (ours and their later "asl"): BAL's but for its
# smoothing and class weights.
PLAIN_ASL_OPTIONS = ("asl_gamma_neg", "asl_gamma_pos", "asl_clip", "asl_eps")
# Options that change the numbers a run computes but not what it trains: per value other than
# the authors' code ran (class prompts encoded every step with gradient, float32 throughout),
# how a verdict names it.
NUMERICS_NOTES = {
    "label_embeddings": {"per_epoch": "class prompts encoded once an epoch without gradient, "
                                      "theirs every step with gradient"},
    "precision": {"bf16": "trained in bf16, theirs in float32", "fp16": "trained in fp16, theirs in float32",
                  "auto": "trained in bf16 if on a GPU (precision 'auto'), theirs in float32"},
    "tf32": {True: "TF32 matmuls and convolutions on a GPU (tf32 = True), theirs in float32"},
}


class RecordError(TailCLIPError):
    """The authors' record is missing or cannot speak to a run (another dataset)."""


@dataclasses.dataclass(frozen=True)
class AuthorsRun:
    """One of the authors' runs: one curve, under one or several run folder names."""
    label: str  # its first run folder name, made unique by its event file's time when shared
    names: tuple[str, ...]  # every run folder that holds this curve, in the record's order
    commit: str
    logged_config: dict  # as the run logged it: the authors' strings
    epochs: tuple[dict, ...]  # {"epoch": k, "train/loss": ..., "val/mAP_medium": ...}, fractions
    started: int  # its event file's time (seconds since 1970 UTC): which code version ran it

    @functools.cached_property  # read for every run at every match
    def config(self) -> dict:
        return authors_config(self.logged_config, self.started)

    @property
    def class_loss(self) -> str | None:
        """The loss it trained on the class logits (a ``CLASS_LOSSES`` key), None for none."""
        return next((term for term in self.config["loss_function"] if term != "clip"), None)

    @property
    def loss_evidence(self) -> str:
        """Why ``class_loss``: the name it logged, its start against the code's versions, the
        scale of its epoch-1 loss."""
        logged = ast.literal_eval(self.logged_config["loss_function"])
        version = _their_asl(self.started)[1] if "asl" in logged else (
            "their bal built BAL in every version" if "bal" in logged else "no loss on the class logits")
        started = datetime.fromtimestamp(self.started, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        scale = f"epoch-1 train loss {self.epochs[0]['train/loss']:.4g}" if self.epochs else "no epoch logged"
        return f"logged {'+'.join(logged)}, started {started} ({version}); {scale}"

    @property
    def planned_epochs(self) -> int:
        return int(self.logged_config["epochs"])

    @property
    def complete(self) -> bool:
        return len(self.epochs) >= self.planned_epochs

    def up_to(self, epoch: int) -> tuple[dict, ...]:
        return tuple(record for record in self.epochs if record["epoch"] <= epoch)


@dataclasses.dataclass(frozen=True)
class Difference:
    option: str
    ours: object
    theirs: object

    def __str__(self) -> str:
        return f"{self.option} {format_value(self.ours)} vs {format_value(self.theirs)}"


def format_value(value) -> str:
    """A setting as a person writes it: ``2e-6``, ``0.4``, ``clip+bal``."""
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value))
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", lambda m: f"e{m[1].replace('+', '')}{m[2]}", f"{value:g}")
    return str(value)


def _our_tag(tag: str) -> str:
    split, _, name = tag.rpartition("/")
    group = name.partition("_")[2]
    return f"{split}/mAP_{AUTHORS_TAGS[group]}" if group in AUTHORS_TAGS else tag


def load_record(path=None) -> list["AuthorsRun"]:
    """The authors' runs that logged at least one evaluation, identical curves merged, in the
    record's order; by default those of the shipped record, checked against its sha256."""
    path = Path(RECORD_FILE if path is None else path)
    if not path.is_file():
        raise RecordError(f"the authors' record {path} is missing (it ships with the repository)")
    content = path.read_bytes()
    if path == RECORD_FILE and hashlib.sha256(content).hexdigest() != RECORD_SHA256:
        raise RecordError(f"{path} differs from the shipped record (sha256 {RECORD_SHA256}): "
                          f"restore it with git checkout")
    entries = json.loads(content)["runs"]
    curves: dict[str, list[dict]] = {}
    for entry in entries:
        if entry["epochs"]:  # three runs were stopped before their first evaluation
            curves.setdefault(json.dumps(entry["epochs"], sort_keys=True), []).append(entry)
    first_names = [group[0]["run"] for group in curves.values()]
    runs = []
    for group in curves.values():
        first = group[0]
        label = first["run"]
        if first_names.count(label) > 1:
            label += f"@{event_time(first)}"
        epochs = tuple({_our_tag(tag): value for tag, value in record.items()} for record in first["epochs"])
        runs.append(AuthorsRun(label, tuple(entry["run"] for entry in group), first["commit"],
                               first["config"], epochs, event_time(first)))
    return runs


def event_time(entry: dict) -> int:
    """When a record entry's run started: the time in its event file's name,
    ``events.out.tfevents.<seconds since 1970>.<host>...``."""
    return int(entry["event_file"].rsplit("tfevents.", 1)[-1].split(".")[0])


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a plain string: a dataset, model or optimizer name, a caption


def _loss_terms(terms) -> tuple[str, ...]:
    return tuple(sorted(terms, key=lambda term: (term != "clip", term)))  # the sum's order does not matter


def _their_asl(started: int) -> tuple[str, str]:
    """What their "asl" built in a run started at ``started``: our term name, and when that was."""
    return next((term, when) for since, term, when in reversed(THEIR_ASL_SINCE) if started >= since)


def authors_config(logged: dict, started: int) -> dict:
    """A config logged by a run started at ``started`` in our values: numbers, booleans, loss
    terms as their code built them then (``"asl"``: ``"bal"``, ``"asl_sum"`` or ``"asl"``)."""
    config = {key: _literal(value) for key, value in logged.items()}
    config["class_caption"] = logged["class_caption"]  # kept as logged, trailing space included
    their_asl = _their_asl(started)[0]
    config["loss_function"] = _loss_terms(their_asl if term == "asl" else term for term in config["loss_function"])
    return config


def our_config(config: dict) -> dict:
    """A run's ``config.json`` (options it lacks at their defaults) with its loss terms as a
    sorted tuple, comparable with ``authors_config``."""
    full = {**Config().to_dict(), **config}
    full["loss_function"] = _loss_terms(full["loss_function"])
    return full


def _acting_options(config: dict) -> set[str]:
    options = set(MATCHED_OPTIONS)
    terms = config["loss_function"]
    if "bal" not in terms:
        options -= set(BAL_OPTIONS)
    if {"asl", "asl_sum"} & set(terms):
        options |= set(PLAIN_ASL_OPTIONS)
    if not set(terms) - {"clip"}:
        options.discard("asl_mul")
    if "clip" not in terms:
        options.discard("use_dataset_train_captions")  # the captions feed the contrastive term only
    if not config["use_weighted_loss"]:
        options.discard("class_weights_power")
    if not config["use_sample_weights"]:
        options.discard("sample_weights_power")
    return options


def _same(ours, theirs) -> bool:
    numbers = (int, float)
    if isinstance(ours, numbers) and isinstance(theirs, numbers) and not isinstance(ours, bool) \
            and not isinstance(theirs, bool):
        return math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)):
        return tuple(ours) == tuple(theirs)
    return type(ours) is type(theirs) and ours == theirs


def differences(ours: dict, run: AuthorsRun) -> list[Difference]:
    """The settings in which ``ours`` (``our_config``) trains otherwise than ``run``."""
    theirs = run.config
    compared = _acting_options(ours) & _acting_options(theirs)
    found = [Difference(option, ours[option], theirs[option]) for option in MATCHED_OPTIONS
             if option in compared and not _same(ours[option], theirs[option])]
    found += [Difference(option, ours[option], allowed[-1]) for option, allowed in AUTHORS_FIXED.items()
              if ours[option] not in allowed]
    return found


def check_record_speaks_to(config: dict) -> None:
    if config["dataset"] not in RECORD_DATASETS:
        raise RecordError(f"the authors' record holds {' and '.join(RECORD_DATASETS)} runs only, "
                          f"not dataset {config['dataset']!r}")


def matching_runs(config: dict, runs: list[AuthorsRun]) -> list[AuthorsRun]:
    """The authors' runs that trained as the run config ``config`` (a ``config.json``) does."""
    ours = our_config(config)
    return [run for run in runs if not differences(ours, run)]


def unreproduced_runs(config: dict, runs: list[AuthorsRun]) -> list[AuthorsRun]:
    """The authors' runs that trained as ``config`` does but for a loss that no option of ours
    trains (``UNREPRODUCED_LOSSES``: their plain loss summed over the batch, where ours is averaged)."""
    ours = our_config(config)
    found = []
    for run in runs:
        ours_instead = UNREPRODUCED_LOSSES.get(run.class_loss)
        if ours_instead in ours["loss_function"]:
            as_theirs = _loss_terms(run.class_loss if term == ours_instead else term for term in ours["loss_function"])
            if not differences({**ours, "loss_function": as_theirs}, run):
                found.append(run)
    return found


def nearest_runs(config: dict, runs: list[AuthorsRun], limit: int = 10) -> list[tuple[AuthorsRun, list[Difference]]]:
    """The authors' runs on the same dataset with the fewest differing settings, every one of
    them up to ``limit`` (in the record's order), each with its differences."""
    ours = our_config(config)
    candidates = [(run, differences(ours, run)) for run in runs if run.config["dataset"] == ours["dataset"]]
    fewest = min((len(found) for _, found in candidates), default=0)
    return [(run, found) for run, found in candidates if len(found) == fewest][:limit]


def numerics_notes(config: dict) -> list[str]:
    """How a run (a ``config.json``) computed otherwise than the authors' code
    (``NUMERICS_NOTES``), as a verdict appends it: [] where it computed as theirs."""
    ours = our_config(config)
    return [notes[ours[option]] for option, notes in NUMERICS_NOTES.items() if ours[option] in notes]
