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


@dataclass(frozen=True)
class Config:
    """Every TailCLIP option with its default (docs/ARCHITECTURE.md lists their meaning)."""

    # Data
    dataset: str = "synthetic_mlt"
    data_root: str = "datasets"
    train_list: Optional[str] = None
    test_list: Optional[str] = None
    class_names: Optional[str] = None
    captions: Optional[str] = None
    image_root: Optional[str] = None
    # Backbone
    model_name: str = "ViT-B/16"
    pretrained: bool | str = True
    interpolate_pos_embedding: bool = False
    # Text and images
    class_caption: str = "a photo of a "
    use_dataset_train_captions: bool = False
    size: int = 224
    max_length: int = 77
    normalize: str = "imagenet"
    # Loader
    batch_size: int = 8
    eval_batch_size: int = 64
    num_workers: int = 4
    # Optimisation
    epochs: int = 50
    lr: float = 1e-6
    optimizer: str = "AdamW"
    momentum: float = 0.9
    weight_decay: float = 0.01
    # Objective
    loss_function: list[str] = field(default_factory=lambda: ["clip", "bal"])
    contrastive: str = "auto"
    asl_mul: float = 1.0
    asl_gamma_neg: float = 4.0
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05
    asl_eps: float = 1e-8
    label_smoothing: float = 0.0
    # Baseline losses on the class logits (tailclip/losses.py says where each default comes from)
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    dbfocal_alpha: float = 0.1
    dbfocal_beta: float = 10.0
    dbfocal_mu: Optional[float] = None  # None: LMPT's value for the dataset (VOC-MLT 0.3, else 0.2)
    dbfocal_lambda: Optional[float] = None  # None: LMPT's value for the dataset (VOC-MLT 5, else 2)
    dbfocal_kappa: float = 0.05
    dbfocal_gamma: float = 2.0
    dbfocal_scale: float = 2.0
    # Re-balancing
    use_sample_weights: bool = True
    sample_weights_power: float = 1.0
    use_weighted_loss: bool = True
    class_weights_power: float = 1.0
    # Model head and evaluation
    label_embeddings: str = "per_step"
    score: str = "softmax"
    # Checkpoints
    save_best_mAP_checkpoint: bool = True
    save_best_tail_mAP_checkpoint: bool = True
    save_newest_checkpoint: bool = True
    # Execution
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0
    precision: str = "auto"
    tf32: bool = False
    image_cache: bool = True
    compile: bool = False
    grad_checkpointing: bool = False
    skip_unreadable_images: bool = False
    max_nonfinite_steps: int = 0
    # Prompt learning
    finetune: str = "full"
    n_ctx: int = 4
    class_specific_ctx: bool = False
    ctx_init: bool = True
    train_logit_scale: bool = True
    n_visual_prompts: int = 8
    # Output
    run_dir: str = "runs"
    log_every_steps: int = 1

    def __post_init__(self) -> None:
        coerced, problems = _check({name: getattr(self, name) for name in OPTION_NAMES})
        if problems:
            raise ConfigError(_format_problems(problems, lambda key: "Config"))
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


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(Config))
_TYPES = typing.get_type_hints(Config)

_CHOICES = {
    "dataset": DATASETS,
    "normalize": ("imagenet", "clip"),
    "optimizer": ("AdamW", "Adam", "SGD"),
    "label_embeddings": LABEL_EMBEDDING_MODES,
    "score": SCORE_KINDS,
    "precision": ("auto", "bf16", "fp16", "fp32"),
    "finetune": FINETUNE_MODES,
    "contrastive": CONTRASTIVE_KINDS,
}


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value >= low), f"must be >= {low}"


def _above(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value > low), f"must be > {low}"


_UNIT_INTERVAL = ((lambda value: 0 <= value < 1), "must be in [0, 1)")

_RANGES = {
    "size": _at_least(1),
    "max_length": _at_least(1),
    "batch_size": _at_least(1),
    "eval_batch_size": _at_least(1),
    "num_workers": _at_least(0),
    "num_threads": _at_least(0),
    "epochs": _at_least(1),
    "lr": _above(0),
    "momentum": _at_least(0),
    "weight_decay": _at_least(0),
    "asl_mul": _at_least(0),
    "asl_gamma_neg": _at_least(0),
    "asl_gamma_pos": _at_least(0),
    "asl_clip": _UNIT_INTERVAL,
    "asl_eps": _above(0),
    "label_smoothing": _UNIT_INTERVAL,
    "focal_gamma": _at_least(0),
    "focal_alpha": ((lambda value: 0 <= value <= 1), "must be in [0, 1]"),
    "dbfocal_alpha": _at_least(0),
    "dbfocal_beta": _at_least(0),
    "dbfocal_lambda": _above(0),
    "dbfocal_kappa": _at_least(0),
    "dbfocal_gamma": _at_least(0),
    "dbfocal_scale": _at_least(0),
    "sample_weights_power": _at_least(0),
    "class_weights_power": _at_least(0),
    "seed": _at_least(0),
    "max_nonfinite_steps": _at_least(0),
    "log_every_steps": _at_least(0),
    "n_ctx": _at_least(1),
    "n_visual_prompts": _at_least(1),
}

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


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


def _run_options(path: Path) -> dict[str, Any]:
    """The options of a run's ``config.json`` (JSON: one object, every option by name)."""
    try:
        values = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a run's config.json ({error}); a config is a Python file "
                          "defining `class CFG`, or the config.json of a run folder") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a run's config.json holds one JSON object of options, "
                          f"not a {type(values).__name__}")
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


def _build(values: dict[str, Any], origin: Callable[[str], str]) -> Config:
    """A ``Config`` from known options, naming each bad key's ``origin`` in the error."""
    coerced, problems = _check({**Config().to_dict(), **values})
    if problems:
        raise ConfigError(_format_problems(problems, origin))
    return Config(**coerced)


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
    if key in _CHOICES and value not in _CHOICES[key]:
        return f"must be one of {', '.join(map(repr, _CHOICES[key]))}"
    if key in _RANGES and value is not None:
        accepts, rule = _RANGES[key]
        return None if accepts(value) else rule
    if key in PATH_OPTIONS and value is not None and not value.strip():
        return "must be a path, not empty"
    if key == "device" and not DEVICE_PATTERN.fullmatch(value):
        return "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"
    if key == "loss_function":
        if not value:
            return "must name at least one loss term"
        if not set(value) <= set(LOSS_TERMS):
            return f"entries must be among {', '.join(map(repr, LOSS_TERMS))}"
        if len(set(value)) != len(value):
            return "must not repeat a loss term"
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
    if pretrained is True and name.startswith(OPEN_CLIP_PREFIX):
        return [("pretrained", f"True means OpenAI's weights, which {name!r} does not name: give one "
                               "of its open_clip pretrained tags (e.g. 'dfn5b'), a checkpoint path, or False")]
    return []


def _check_prompt_learning(values: dict[str, Any]) -> list[tuple[str, str]]:
    if values["finetune"] in PROMPT_MODES and values["label_embeddings"] != "per_step":
        return [("label_embeddings", f"finetune = {values['finetune']!r} trains the class prompts, which needs "
                                     f"label_embeddings = 'per_step' ({values['label_embeddings']!r} encodes "
                                     "them without gradient)")]
    return []


def _check_architecture(values: dict[str, Any]) -> list[tuple[str, str]]:
    """The model name and the options that depend on its architecture (input size, ViT-only
    options), so that a wrong choice fails before any data is read rather than when the
    model is built. OpenAI's names are checked against ``clip.architectures``; open_clip's
    as far as its shipped model configs tell, without importing it."""
    name = values["model_name"]
    if name.startswith(OPEN_CLIP_PREFIX):
        return _check_open_clip_name(name)
    from clip.architectures import ARCHITECTURES  # imports torch (through clip/__init__): only when checking

    if name not in ARCHITECTURES:
        return [("model_name", f"unknown CLIP model {name!r}{close_matches(name, ARCHITECTURES)} "
                               f"(known: {', '.join(ARCHITECTURES)}; or 'open_clip:<name>')")]
    arch, size = ARCHITECTURES[name], values["size"]
    native, patch = arch.image_resolution, arch.vision_patch_size
    if not arch.is_vit:
        kind = f"{name} is a ResNet (its attention pool is tied to {native}-pixel images)"
        if values["interpolate_pos_embedding"]:
            return [("interpolate_pos_embedding", f"works on Vision Transformers only; {kind}: set "
                                                  "interpolate_pos_embedding = False")]
        if values["finetune"] == "prompt+visual":
            return [("finetune", f"'prompt+visual' needs a Vision Transformer; {kind}: set finetune = 'prompt'")]
    if size != native and not values["interpolate_pos_embedding"]:
        resize = ", or interpolate_pos_embedding = True" if arch.is_vit else ""
        return [("size", f"{name} takes {native}-pixel images, not {size}; set size = {native}{resize}")]
    if arch.is_vit and size % patch:
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
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return {path.stem for folder in spec.submodule_search_locations
            for path in (Path(folder) / "model_configs").glob("*.json")}


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
    hint = f"did you mean {by_lower[close[0]]!r}?" if close else "see docs/ARCHITECTURE.md for the options"
    return f"unknown option; {hint}"


def _format_problems(problems: list[tuple[str, str]], origin: Callable[[str], str]) -> str:
    lines = [f"{origin(key)}: {key}: {message}" for key, message in problems]
    return lines[0] if len(lines) == 1 else "invalid config:\n  " + "\n  ".join(lines)
