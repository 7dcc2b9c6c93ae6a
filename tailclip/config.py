"""Run configuration: every option, its default and its allowed values.

A config file is plain Python defining ``class CFG`` whose attributes are options (as in the
paper's repository); options it leaves out take the defaults below. ``load_config`` reads
such a file, applies ``--set key=value`` overrides and checks everything, so that a typo or
a wrong value fails at start-up with a message naming the key and where it came from,
instead of being silently ignored or failing an hour into a run.

``Config`` is frozen: the config that is logged is the config that runs. Derive a variant
with ``dataclasses.replace(cfg, epochs=2)``, which checks the new values too.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import re
import runpy
import sys
import traceback
import typing
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tailclip import REPO_ROOT
from tailclip.errors import TailCLIPError

DATASETS = ("voc_mlt", "coco_mlt", "synthetic_mlt", "custom")
# The choices of the options that other modules act on, named here once.
CONTRASTIVE_TERM = "clip"  # the contrastive loss between images and captions
LOSS_TERMS = (CONTRASTIVE_TERM, "bal", "asl", "bce", "focal", "dbfocal")  # the others: on the class logits
CONTRASTIVE_KINDS = ("auto", "softmax", "sigmoid")
LABEL_EMBEDDING_MODES = ("per_step", "per_epoch")
SCORE_KINDS = ("softmax", "sigmoid", "logits")
FINETUNE_MODES = ("full", "prompt", "prompt+visual")
PROMPT_MODES = ("prompt", "prompt+visual")
OPEN_CLIP_PREFIX = "open_clip:"
CUSTOM_DATASET_FILES = ("train_list", "test_list", "class_names", "captions", "image_root")
CUSTOM_DATASET_REQUIRED = ("train_list", "test_list", "class_names", "image_root")
PATH_OPTIONS = ("data_root", "run_dir", *CUSTOM_DATASET_FILES)


def resolve_path(path) -> Path:
    """An absolute path; a relative one is taken relative to the repository root, not the cwd.

    The rule of every path in a config (data_root, run_dir, a custom dataset's files, a
    pretrained checkpoint), wherever the command runs from: a checkout's data and runs stay
    together."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


class ConfigError(TailCLIPError, ValueError):
    """A config file, an override or a flag holds an unknown option or a bad value."""


LEARNT = "learnt"  # changes what a run learns: fixed for the run
SCHEDULE = "schedule"  # changes what a run learns, from the epoch reached on: a resumed run may change it
RUNNING = "running"  # how a run runs (where, how fast, what it keeps): a resumed run may change it
ROLES = {LEARNT: "what is learnt", SCHEDULE: "what is learnt (may change on resume)",
         RUNNING: "how the run runs"}
# The authors' runs logged the option's value (compared with theirs); a tuple instead names
# the values their code fixes without logging them.
AUTHORS_LOGGED = "logged"


class Pattern(typing.NamedTuple):
    """Allowed text: a regular expression and what it allows, in words."""
    regex: re.Pattern
    words: str


DEVICE = Pattern(re.compile(r"auto|cpu|cuda(:\d+)?"), "'auto', 'cpu', 'cuda' or 'cuda:N'")


@dataclass(frozen=True)
class Range:
    """Allowed numbers: ``low`` up to ``high`` (None: unbounded), each end open or closed."""
    low: float
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = True

    def accepts(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


AT_LEAST_0, AT_LEAST_1, ABOVE_0 = Range(0), Range(1), Range(0, low_open=True)
UNIT_INTERVAL = Range(0, 1)


@dataclass(frozen=True)
class Option:
    """What is known of an option besides its type and default (``Config``'s annotations)."""
    help: str
    role: str = LEARNT  # LEARNT, SCHEDULE or RUNNING
    choices: tuple = ()  # the allowed values; of a list option, the allowed entries
    range: Optional[Range] = None
    pattern: Optional[Pattern] = None
    authors: Any = None  # AUTHORS_LOGGED, the values the authors' code fixes, or None: not compared


def option(default: Any, help: str, **about: Any) -> Any:
    """A ``Config`` field: its default and what ``Option`` says of it."""
    metadata = {"option": Option(help, **about)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Config:
    """Every TailCLIP option: its type, default, allowed values, role and meaning (``OPTIONS``)."""

    # Data
    dataset: str = option("synthetic_mlt", "the benchmark, or your own data (`custom`)", choices=DATASETS,
                          authors=AUTHORS_LOGGED)
    data_root: str = option("datasets", "folder holding one folder per dataset (relative to the repository "
                                        "root or absolute)", role=RUNNING)
    train_list: Optional[str] = option(None, "`custom` only: the training split file")
    test_list: Optional[str] = option(None, "`custom` only: the test split file")
    class_names: Optional[str] = option(None, "`custom` only: the class names file")
    captions: Optional[str] = option(None, "`custom` only: the captions file (optional)")
    image_root: Optional[str] = option(None, "`custom` only: the folder the split files' image paths are in")
    # Backbone
    model_name: str = option("ViT-B/16", "any of `clip.available_models()`, or `open_clip:<name>` for any of "
                                         "`open_clip.list_models()` (needs `open_clip_torch`)", authors=AUTHORS_LOGGED)
    pretrained: bool | str = option(True, "True: OpenAI's weights (OpenAI names only); False: random ones; a "
                                          "string: a checkpoint file, or for an `open_clip:` name one of its "
                                          "pretrained tags", authors=(True,))
    interpolate_pos_embedding: bool = option(False, "allow a `size` other than a Vision Transformer's own")
    # Text and images
    class_caption: str = option("a photo of a ", "prompt prefix of the class names", authors=AUTHORS_LOGGED)
    use_dataset_train_captions: bool = option(False, "captions from the caption file instead of the class names",
                                              authors=AUTHORS_LOGGED)
    size: int = option(224, "training and evaluation image size (square, aspect not kept)", range=AT_LEAST_1,
                       authors=AUTHORS_LOGGED)
    max_length: int = option(77, "text context length", range=AT_LEAST_1, authors=AUTHORS_LOGGED)
    normalize: str = option("imagenet", "mean and std of the images: ImageNet's or CLIP's",
                            choices=("imagenet", "clip"), authors=("imagenet",))
    # Loader
    batch_size: int = option(8, "global batch (all processes together)", range=AT_LEAST_1, authors=AUTHORS_LOGGED)
    eval_batch_size: int = option(64, "evaluation batch", range=AT_LEAST_1, role=RUNNING)
    num_workers: int = option(4, "DataLoader workers decoding JPEGs (`image_cache = False`); the cache is read in "
                                 "the main process", range=AT_LEAST_0, role=RUNNING)
    # Optimisation
    epochs: int = option(50, "epochs of the cosine schedule", range=AT_LEAST_1, role=SCHEDULE,
                         authors=AUTHORS_LOGGED)
    lr: float = option(1e-6, "peak learning rate of the cosine schedule", range=ABOVE_0, role=SCHEDULE,
                       authors=AUTHORS_LOGGED)
    optimizer: str = option("AdamW", "AdamW (betas 0.9/0.98, eps 1e-9), Adam or SGD",
                            choices=("AdamW", "Adam", "SGD"), authors=AUTHORS_LOGGED)
    momentum: float = option(0.9, "SGD only", range=AT_LEAST_0)
    weight_decay: float = option(0.01, "decoupled (AdamW) or L2 (Adam, SGD) weight decay", range=AT_LEAST_0,
                                 authors=AUTHORS_LOGGED)
    # Objective
    loss_function: list[str] = option(["clip", "bal"], "the terms of the loss: `clip` (contrastive), `bal`, "
                                                       "`asl`, `bce`, `focal`, `dbfocal`; the terms on the class "
                                                       "logits alone or with `clip`",
                                      choices=LOSS_TERMS, authors=AUTHORS_LOGGED)
    contrastive: str = option("auto", "the `clip` term: CLIP's softmax, SigLIP's sigmoid (with the model's "
                                      "learned logit bias); `auto`: sigmoid for a backbone with a logit bias",
                              choices=CONTRASTIVE_KINDS, authors=("auto", "softmax"))
    asl_mul: float = option(1.0, "lambda on every term on the class logits (all but `clip`)", range=AT_LEAST_0,
                            authors=AUTHORS_LOGGED)
    asl_gamma_neg: float = option(4.0, "BAL and ASL: focusing exponent of the negatives", range=AT_LEAST_0,
                                  authors=AUTHORS_LOGGED)
    asl_gamma_pos: float = option(0.0, "BAL and ASL: focusing exponent of the positives", range=AT_LEAST_0,
                                  authors=AUTHORS_LOGGED)
    asl_clip: float = option(0.05, "BAL and ASL: probability margin of the negatives", range=UNIT_INTERVAL,
                             authors=AUTHORS_LOGGED)
    asl_eps: float = option(1e-8, "BAL and ASL: smallest probability in the logarithm", range=ABOVE_0,
                            authors=AUTHORS_LOGGED)
    label_smoothing: float = option(0.0, "BAL: label smoothing of the targets", range=UNIT_INTERVAL,
                                    authors=AUTHORS_LOGGED)
    # Baseline losses on the class logits (tailclip/losses.py says where each default comes from)
    focal_gamma: float = option(2.0, "`focal`: focusing exponent (Lin et al., ICCV 2017)", range=AT_LEAST_0)
    focal_alpha: float = option(0.25, "`focal`: weight of the positives (1 - alpha on the negatives)",
                                range=Range(0, 1, high_open=False))
    dbfocal_alpha: float = option(0.1, "`dbfocal`: re-balanced weight alpha + sigmoid(beta (r - mu))",
                                  range=AT_LEAST_0)
    dbfocal_beta: float = option(10.0, "`dbfocal`: beta of the re-balanced weight", range=AT_LEAST_0)
    dbfocal_mu: Optional[float] = option(None, "`dbfocal`: threshold mu; None: LMPT's value for the dataset "
                                               "(VOC-MLT 0.3, otherwise 0.2)")
    dbfocal_lambda: Optional[float] = option(None, "`dbfocal`: negative-tolerant scale of the negatives' logits; "
                                                   "None: LMPT's value (VOC-MLT 5, otherwise 2)", range=ABOVE_0)
    dbfocal_kappa: float = option(0.05, "`dbfocal`: class-specific bias kappa log(p / (1 - p))", range=AT_LEAST_0)
    dbfocal_gamma: float = option(2.0, "`dbfocal`: focusing exponent", range=AT_LEAST_0)
    dbfocal_scale: float = option(2.0, "`dbfocal`: constant factor (the authors' `balance_param`)",
                                  range=AT_LEAST_0)
    # Re-balancing
    use_sample_weights: bool = option(True, "the class-rarity-weighted sampler", authors=AUTHORS_LOGGED)
    sample_weights_power: float = option(1.0, "exponent of the sampler's weights", range=AT_LEAST_0,
                                         authors=AUTHORS_LOGGED)
    use_weighted_loss: bool = option(True, "class weights in BAL", authors=AUTHORS_LOGGED)
    class_weights_power: float = option(1.0, "exponent of BAL's class weights", range=AT_LEAST_0,
                                        authors=AUTHORS_LOGGED)
    # Model head and evaluation
    label_embeddings: str = option("per_step", "the class prompts encoded at every step (with gradient) or "
                                               "once per epoch", choices=LABEL_EMBEDDING_MODES)
    score: str = option("softmax", "the ranking score of the class logits", choices=SCORE_KINDS,
                        authors=("softmax",))
    # Checkpoints
    save_best_mAP_checkpoint: bool = option(True, "keep the checkpoint of the best mAP", role=RUNNING)
    save_best_tail_mAP_checkpoint: bool = option(True, "keep the checkpoint of the best tail mAP", role=RUNNING)
    save_newest_checkpoint: bool = option(True, "keep the newest checkpoint (what `--resume` continues)",
                                          role=RUNNING)
    # Execution
    seed: int = option(0, "seed of the weights drawn, the batches and the flips", range=AT_LEAST_0)
    device: str = option("auto", "where the run trains; `auto`: CUDA when available", pattern=DEVICE,
                         role=RUNNING)
    num_threads: int = option(0, "CPU threads of torch's operations; 0: torch's default, one per core",
                              range=AT_LEAST_0, role=RUNNING)
    precision: str = option("auto", "`auto`: bf16 on CUDA, fp32 on the CPU",
                            choices=("auto", "bf16", "fp16", "fp32"), role=RUNNING)
    tf32: bool = option(False, "TF32 for CUDA matmuls and convolutions (faster, not the paper's numerics); "
                               "False: PyTorch's flags left as they are", role=RUNNING)
    image_cache: bool = option(True, "the decoded-image cache", role=RUNNING)
    compile: bool = option(False, "`torch.compile`", role=RUNNING)
    grad_checkpointing: bool = option(False, "recompute each residual block in the backward pass (the same "
                                             "gradients, less activation memory)", role=RUNNING)
    skip_unreadable_images: bool = option(False, "leave unreadable images out instead of stopping")
    max_nonfinite_steps: int = option(0, "non-finite losses tolerated before stopping", range=AT_LEAST_0,
                                      role=RUNNING)
    # Prompt learning
    finetune: str = option("full", "train every weight, or only prompts on the frozen CLIP",
                           choices=FINETUNE_MODES, authors=("full",))
    n_ctx: int = option(4, "prompt modes: learnable context vectors", range=AT_LEAST_1)
    class_specific_ctx: bool = option(False, "prompt modes: context vectors per class")
    ctx_init: bool = option(True, "prompt modes: context initialised from `class_caption`")
    train_logit_scale: bool = option(True, "prompt modes: also train `logit_scale`")
    n_visual_prompts: int = option(8, "`prompt+visual`: learnable image-side prompt tokens", range=AT_LEAST_1)
    # Output
    run_dir: str = option("runs", "runs go to `run_dir/<run name>/`", role=RUNNING)
    log_every_steps: int = option(1, "per-step TensorBoard curves every N global steps; 0: none",
                                  range=AT_LEAST_0, role=RUNNING)

    def __post_init__(self) -> None:
        # The one check of every config, however it is made (a file, a checkpoint, `replace`).
        coerced, problems = _check({name: getattr(self, name) for name in OPTION_NAMES})
        if problems:
            raise ConfigError(_format_problems(problems, _ORIGIN.get()))
        for name, value in coerced.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """All options as a JSON-serialisable dict (for config.json and checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "dict") -> Config:
        """The inverse of ``to_dict``; options missing from ``values`` take their defaults.

        ``source`` names where ``values`` came from (a checkpoint path) in error messages.
        """
        _reject_unknown(values, source)
        return _build(values, lambda key: source)



OPTIONS: dict[str, Option] = {f.name: f.metadata["option"] for f in dataclasses.fields(Config)}
OPTION_NAMES = tuple(OPTIONS)
_TYPES = typing.get_type_hints(Config)


def options_with_role(*roles: str) -> tuple[str, ...]:
    """The options of the given roles, in declaration order."""
    return tuple(name for name, about in OPTIONS.items() if about.role in roles)


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read the ``class CFG`` of the Python file ``path`` (or the options of a run's
    ``config.json``), apply ``key=value`` overrides.

    Raises ``ConfigError`` naming the file (or the override) and the key for an unknown
    option (suggesting the closest known one), a wrong type or a value out of range.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(child.name for child in path.glob("*.py"))
        raise ConfigError(f"{path} is a folder, not a config file; "
                          + (f"give one of its files: {', '.join(files)}" if files else "it holds no .py file"))
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    values = _run_options(path) if path.suffix == ".json" else _file_options(path)
    _reject_unknown(values, str(path))
    origin = {}
    for text in overrides:
        key, value = parse_override(text)
        values[key] = value
        origin[key] = f"--set {text}"
    return _build(values, lambda key: origin.get(key, str(path)))


def _file_options(path: Path) -> dict[str, Any]:
    """The attributes of the ``class CFG`` of the Python file ``path``."""
    cfg_class = _run_config_file(path).get("CFG")
    if not isinstance(cfg_class, type):
        raise ConfigError(f"{path}: a config file must define `class CFG` with the options as attributes")
    # dir() rather than vars() so that a CFG may inherit options from another class.
    return {name: getattr(cfg_class, name) for name in dir(cfg_class)
            if not (name.startswith("__") and name.endswith("__"))}


# The key of the run's id beside the options in a run's config.json (and in its metrics.jsonl records).
RUN_ID = "run_id"


def _run_options(path: Path) -> dict[str, Any]:
    """The options of a run's ``config.json`` (JSON: one object, every option by name, and
    the run's id under `RUN_ID`, which names the run, not an option)."""
    try:
        values = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a run's config.json ({error}); a config is a Python file "
                          "defining `class CFG`, or the config.json of a run folder") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a run's config.json holds one JSON object of options, "
                          f"not a {type(values).__name__}")
    values.pop(RUN_ID, None)
    return values


def default_run_name(config_path: str | Path) -> str:
    """The run folder's name when no --run-name is given: the config file's stem, or for a
    run's ``config.json`` the name of the run folder holding it."""
    path = Path(config_path)
    return path.resolve().parent.name if path.suffix == ".json" else path.stem


def _run_config_file(path: Path) -> dict[str, Any]:
    """The names a config file defines. A config that cannot run (a syntax error, a failed
    import, any exception) is a ``ConfigError`` naming the file and line and what went wrong:
    the user's file is at fault, and runpy's traceback would only bury that line."""
    try:
        return runpy.run_path(str(path))
    except SyntaxError as error:  # IndentationError too; its own file, maybe one the config imports
        raise ConfigError(f"{error.filename}:{error.lineno}: {type(error).__name__}: {error.msg}") from None
    except Exception as error:  # noqa: BLE001 -- whatever the config's own code raises
        # The config's own line that led to the error (none when the file could not be read).
        lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
                 if Path(frame.filename).resolve() == path.resolve()]
        where = f"{path}:{lines[-1]}" if lines else str(path)
        raise ConfigError(f"{where}: {type(error).__name__}: {error}") from error


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` override into ``(key, value)``.

    The value is read as a Python literal (``lr=1e-5``, ``loss_function=["clip"]``) and
    otherwise kept as plain text (``dataset=voc_mlt``, ``device=cuda:1``). Text options keep
    the text as typed (``run_dir=2024`` is ``"2024"``; ``None`` clears an optional path);
    boolean options accept what ``parse_bool`` accepts.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text}: expected key=value")
    if key not in OPTION_NAMES:
        raise ConfigError(f"--set {text}: {key}: {_unknown_option_message(key)}")
    kind = _TYPES[key]
    if kind == bool | str and raw.strip() not in ("True", "true", "1", "False", "false", "0"):
        # A pretrained tag or a checkpoint path, quoted or not, as a text option reads it.
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            return key, raw.strip()
        return key, value if isinstance(value, str) else raw.strip()
    if kind in (bool, bool | str):
        try:
            return key, parse_bool(raw.strip())
        except ConfigError as error:
            raise ConfigError(f"--set {text}: {key}: {error}") from None
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        return key, raw if kind in (str, Optional[str]) else raw.strip()
    if kind is str and not isinstance(value, str):
        return key, raw
    if kind == Optional[str] and not (value is None or isinstance(value, str)):
        return key, raw
    return key, value


def parse_bool(text: str) -> bool:
    """A command-line boolean: True/true/1 or False/false/0; anything else is an error.

    (``type=bool`` in argparse would turn every non-empty string, "False" included, into True.)
    """
    if text in ("True", "true", "1"):
        return True
    if text in ("False", "false", "0"):
        return False
    raise ConfigError(f"expected True/False/true/false/1/0, got {text!r}")


# Where each option's value came from, for the check's error message (a file, an override).
_ORIGIN: ContextVar[Callable[[str], str]] = ContextVar("origin", default=lambda key: "Config")


def _build(values: dict[str, Any], origin: Callable[[str], str]) -> Config:
    """A ``Config`` from known options, naming each bad key's ``origin`` in the error."""
    token = _ORIGIN.set(origin)
    try:
        return Config(**values)
    finally:
        _ORIGIN.reset(token)


def _check(values: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Type- and range-check every option; return the values coerced (int to float, tuple
    to list) and a list of ``(key, problem)``."""
    coerced, problems = {}, []
    for key in OPTION_NAMES:
        coerced[key], problem = _check_option(key, values[key])
        if problem:
            problems.append((key, problem))
    if not {key for key, _ in problems} & {"dataset", *CUSTOM_DATASET_FILES}:
        problems.extend(_check_custom_dataset(coerced))
    if not {key for key, _ in problems} & {"model_name", "pretrained"}:
        problems.extend(_check_backbone(coerced))
    if not {key for key, _ in problems} & {"finetune", "label_embeddings"}:
        problems.extend(_check_prompt_learning(coerced))
    if not {key for key, _ in problems} & {"model_name", "size", "interpolate_pos_embedding", "finetune"}:
        problems.extend(_check_architecture(coerced))
    return coerced, problems


def option_problem(key: str, value: Any) -> Optional[str]:
    """What is wrong with ``value`` for the option ``key`` on its own (type, range, allowed
    values), or None; how it combines with other options is checked with the whole config."""
    return _check_option(key, value)[1]


def _check_option(key: str, value: Any) -> tuple[Any, Optional[str]]:
    """``(value coerced to the option's type, problem or None)``."""
    coerced, type_problem = _check_type(value, _TYPES[key])
    if type_problem:
        return value, f"{type_problem}, got {type(value).__name__} {value!r}"
    value_problem = _check_value(key, coerced)
    return coerced, f"{value_problem}, got {coerced!r}" if value_problem else None


def _check_type(value: Any, kind: Any) -> tuple[Any, Optional[str]]:
    """Return ``(value, None)``, coerced to ``kind``, or ``(value, problem)``."""
    if kind is bool:
        return value, None if isinstance(value, bool) else "must be True or False"
    # bool is an int subclass in Python; a bool where a number belongs is a mistake.
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return value, None if is_number and isinstance(value, int) else "must be an int"
    if kind is float:
        return (float(value), None) if is_number else (value, "must be a number")
    if kind is str:
        return value, None if isinstance(value, str) else "must be a string"
    if kind == bool | str:
        return value, None if isinstance(value, (bool, str)) else "must be True, False or a string"
    if kind == Optional[str]:
        return value, None if value is None or isinstance(value, str) else "must be a string or None"
    if kind == Optional[float]:
        if value is None:
            return value, None
        return (float(value), None) if is_number else (value, "must be a number or None")
    if kind == list[str]:
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            return list(value), None
        return value, "must be a list of strings"
    raise TypeError(f"no type check for {kind}")


def _check_value(key: str, value: Any) -> Optional[str]:
    about = OPTIONS[key]
    if key in PATH_OPTIONS and value is not None and not value.strip():
        return "must be a path, not empty"
    if key == "loss_function":
        if not value:
            return "must name at least one loss term"
        if not set(value) <= set(about.choices):
            return f"entries must be among {', '.join(map(repr, about.choices))}"
        if len(set(value)) != len(value):
            return "must not repeat a loss term"
        return None
    if about.choices and value not in about.choices:
        return f"must be one of {', '.join(map(repr, about.choices))}"
    if about.range and value is not None and not about.range.accepts(value):
        return f"must be {about.range}"
    if about.pattern and not about.pattern.regex.fullmatch(value):
        return f"must be {about.pattern.words}"
    return None


def _check_custom_dataset(values: dict[str, Any]) -> list[tuple[str, str]]:
    """The file options are the definition of a custom dataset, and mean nothing otherwise."""
    if values["dataset"] == "custom":
        return [(key, "is required when dataset = 'custom'")
                for key in CUSTOM_DATASET_REQUIRED if values[key] is None]
    return [(key, f"is only used with dataset = 'custom', not {values['dataset']!r}")
            for key in CUSTOM_DATASET_FILES if values[key] is not None]


def _check_backbone(values: dict[str, Any]) -> list[tuple[str, str]]:
    """``pretrained`` is True (OpenAI's weights), False (random ones), a checkpoint path, or,
    for an open_clip model, one of its pretrained tags; whether a tag or a path exists is
    checked when the model is built, where open_clip's registry is at hand."""
    name, pretrained = values["model_name"], values["pretrained"]
    if name.startswith(OPEN_CLIP_PREFIX) and not name[len(OPEN_CLIP_PREFIX):]:
        return [("model_name", f"names no model after {OPEN_CLIP_PREFIX!r} (e.g. 'open_clip:ViT-B-16')")]
    if isinstance(pretrained, str) and not pretrained.strip():
        return [("pretrained", "must be True, False, an open_clip pretrained tag or a checkpoint path, "
                               "not an empty string")]
    return []


def _check_prompt_learning(values: dict[str, Any]) -> list[tuple[str, str]]:
    if values["finetune"] in PROMPT_MODES and values["label_embeddings"] != "per_step":
        return [("label_embeddings", f"finetune = {values['finetune']!r} trains the class prompts, which needs "
                                     f"label_embeddings = 'per_step' ({values['label_embeddings']!r} encodes "
                                     "them without gradient)")]
    return []


@dataclass(frozen=True)
class Architecture:
    """What the options that depend on a backbone need to know of it."""
    resolution: int  # the input size its weights were trained at
    patch: Optional[int]  # a Vision Transformer's patch size; None: a ResNet
    ours: bool  # built by our clip package (else open_clip's own model, as it is)


def _check_architecture(values: dict[str, Any]) -> list[tuple[str, str]]:
    """The model name and the options that depend on its architecture (its weights, input
    size, ViT-only options, prompt modes): every such check of TailCLIP is here, so that a
    wrong choice fails before any data is read rather than when the model is built. OpenAI's
    names are checked against ``clip.architectures``; open_clip's as far as its model configs
    tell (its registry once imported, else the configs it ships, read without importing it)."""
    name, pretrained, problems = values["model_name"], values["pretrained"], []
    if name.startswith(OPEN_CLIP_PREFIX):
        problems = _check_open_clip_name(name)
        if pretrained is True:
            problems.append(("pretrained", f"True means OpenAI's weights, which {name!r} does not name: give one "
                                           "of its open_clip pretrained tags (e.g. 'dfn5b'), a checkpoint path, "
                                           "or False"))
        arch = None if problems else _open_clip_architecture(name[len(OPEN_CLIP_PREFIX):])
        if arch is None:  # open_clip is not installed: building the model says how to install it
            return problems
    else:
        import clip  # imports torch: only when checking
        from clip import architectures

        if name not in architectures.ARCHITECTURES:
            return [("model_name", f"unknown CLIP model {name!r}{close_matches(name, architectures.ARCHITECTURES)} "
                                   f"(known: {', '.join(architectures.ARCHITECTURES)}; or 'open_clip:<name>')")]
        if pretrained is True and name not in clip.available_models():
            problems = [("pretrained", f"model_name = {name!r} has no pretrained OpenAI weights (those are: "
                                       f"{', '.join(clip.available_models())}); set pretrained = False to train "
                                       "it from random weights")]
        spec = architectures.ARCHITECTURES[name]
        arch = Architecture(spec.image_resolution, spec.vision_patch_size if spec.is_vit else None, True)
    return _check_geometry(name, arch, values) or problems


def _check_geometry(name: str, arch: Architecture, values: dict[str, Any]) -> list[tuple[str, str]]:
    """The input size, the ViT-only options and the prompt modes on the backbone ``arch``."""
    size = values["size"]
    native, patch = arch.resolution, arch.patch
    if not arch.ours:
        own = f"{name} runs as open_clip's own model"
        if values["finetune"] in PROMPT_MODES:
            return [("finetune", f"{values['finetune']!r} needs a backbone of our clip package (OpenAI's, or an "
                                 f"open_clip standard CLIP); {own}: set finetune = 'full'")]
        if size != native:
            return [("size", f"{name} takes {native}-pixel images, not {size}, and interpolate_pos_embedding "
                             f"works on our clip package's Vision Transformers only ({own}); set size = {native}")]
        return []
    if patch is None:
        kind = f"{name} is a ResNet (its attention pool is tied to {native}-pixel images)"
        if values["interpolate_pos_embedding"]:
            return [("interpolate_pos_embedding", f"works on Vision Transformers only; {kind}: set "
                                                  "interpolate_pos_embedding = False")]
        if values["finetune"] == "prompt+visual":
            return [("finetune", f"'prompt+visual' needs a Vision Transformer; {kind}: set finetune = 'prompt'")]
    if size != native and not values["interpolate_pos_embedding"]:
        resize = ", or interpolate_pos_embedding = True" if patch else ""
        return [("size", f"{name} takes {native}-pixel images, not {size}; set size = {native}{resize}")]
    if patch and size % patch:
        below = max(patch, size - size % patch)
        return [("size", f"{size} is not a multiple of {name}'s patch size {patch}; set size = {below} "
                         f"or {below + patch}")]
    return []


def _check_open_clip_name(model_name: str) -> list[tuple[str, str]]:
    """An unknown open_clip model name, with the close matches. Without open_clip installed
    nothing is checked here: building the model says how to install it."""
    known = _open_clip_model_names()
    name = model_name[len(OPEN_CLIP_PREFIX):]
    if known is None or name in known:
        return []
    return [("model_name", f"unknown open_clip model {name!r}{close_matches(name, known)} "
                           "(open_clip.list_models() lists them all)")]


def _open_clip_model_names() -> Optional[set[str]]:
    """The models open_clip knows, or None when it is not installed. Once imported, its
    registry (which code may extend); before, the configs it ships, read without importing
    it (open_clip imports torch, timm and its model zoo)."""
    if "open_clip" in sys.modules:
        module = sys.modules["open_clip"]
        return None if module is None else set(module.list_models())
    folder = _open_clip_configs_folder()
    return None if folder is None else {path.stem for path in folder.glob("*.json")}


def _open_clip_configs_folder() -> Optional[Path]:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "model_configs"


def _open_clip_architecture(name: str) -> Optional[Architecture]:
    """The architecture of open_clip's model ``name`` from its model config, or None when
    open_clip is not installed."""
    from clip.open_clip_compat import is_plain_clip

    if "open_clip" in sys.modules:
        module = sys.modules["open_clip"]
        model_cfg = None if module is None else module.get_model_config(name)
    else:
        folder = _open_clip_configs_folder()
        model_cfg = None if folder is None else json.loads((folder / f"{name}.json").read_text())
    if model_cfg is None:
        return None
    vision = model_cfg.get("vision_cfg", {})
    size = vision.get("image_size", 224)
    is_resnet = isinstance(vision.get("layers"), (list, tuple))
    return Architecture(size[0] if isinstance(size, (list, tuple)) else size,
                        None if is_resnet else vision.get("patch_size"), is_plain_clip(model_cfg))


def close_matches(word: str, candidates: Iterable[str]) -> str:
    """"; close matches: a, b" for the candidates nearest to ``word`` (case aside), else ""."""
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    matches = difflib.get_close_matches(word.lower(), by_lower, n=5, cutoff=0.6)
    return f"; close matches: {', '.join(by_lower[m] for m in matches)}" if matches else ""


def _reject_unknown(values: dict[str, Any], source: str) -> None:
    unknown = [key for key in values if key not in OPTION_NAMES]
    if unknown:
        raise ConfigError(_format_problems([(key, _unknown_option_message(key)) for key in unknown],
                                           lambda key: source))


def _unknown_option_message(key: str) -> str:
    by_lower = {name.lower(): name for name in OPTION_NAMES}
    close = difflib.get_close_matches(key.lower(), by_lower, n=1, cutoff=0.6)
    hint = f"did you mean {by_lower[close[0]]!r}?" if close else "see docs/options.md for the options"
    return f"unknown option; {hint}"


def _format_problems(problems: list[tuple[str, str]], origin: Callable[[str], str]) -> str:
    lines = [f"{origin(key)}: {key}: {message}" for key, message in problems]
    return lines[0] if len(lines) == 1 else "invalid config:\n  " + "\n  ".join(lines)


def _literal(value: Any) -> str:
    """A value as a config file writes it, in Markdown code."""
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{item}"' for item in value) + "]`"
    return f'`"{value}"`' if isinstance(value, str) else f"`{value!r}`"


_TYPE_WORDS = {bool: "True or False", int: "an integer", float: "a number", str: "text",
               bool | str: "True, False or text", Optional[str]: "a path or None",
               Optional[float]: "None or a number", list[str]: "a list"}


def _allowed(key: str) -> str:
    about = OPTIONS[key]
    if about.choices:
        return ("any of " if _TYPES[key] == list[str] else "") + ", ".join(map(_literal, about.choices))
    if about.pattern:
        return about.pattern.words.replace("'", "`")
    words = _TYPE_WORDS[_TYPES[key]]
    return f"{words} {about.range}" if about.range else words


def options_markdown() -> str:
    """The options as a Markdown table (what the docs show): name, default, allowed values,
    whether the option changes what is learnt or how the run runs, meaning."""
    rows = ["| option | default | allowed | changes | meaning |", "| --- | --- | --- | --- | --- |"]
    for field_ in dataclasses.fields(Config):
        about = OPTIONS[field_.name]
        default = field_.default_factory() if field_.default is dataclasses.MISSING else field_.default
        rows.append(f"| `{field_.name}` | {_literal(default)} | {_allowed(field_.name)} | {ROLES[about.role]} "
                    f"| {about.help} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m tailclip.config --markdown  (prints the options table)")
    print(options_markdown(), end="")
