"""Sweeps: many runs of one config, each its own run folder under ``<run_dir>/<sweep name>/``.

A sweep is a list of settings (named sets of ``key=value`` overrides: the cross product of
``--grid`` values, or named ``--variant``s, or both), each trained once per seed in the folder
``<setting>_seed<k>``. Every run's config is built and checked before the first run starts.
Running the same sweep again skips finished runs, resumes interrupted ones from their newest
checkpoint and starts the rest.

On the CPU or one GPU the runs go one after another, in this process (``train()``): no
interpreter and library start-up per run, and Ctrl-C reaches the training loop, which saves
its checkpoint before the sweep stops. With several GPUs each run is a ``train.py`` process
that sees one GPU (``CUDA_VISIBLE_DEVICES``), one per GPU at a time: a GPU holds one process's
CUDA context, and a run that crashes or runs out of memory takes no other run with it.

``--search N`` samples settings with Optuna instead (see ``run_search``).
"""
import ast
import dataclasses
import itertools
import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch

from tailclip import REPO_ROOT
from tailclip.config import (
    RUNNING,
    Config,
    load_config,
    option_problem,
    options_with_role,
    parse_override,
    resolve_path,
)
from tailclip.engine import training
from tailclip.engine.files import write_json
from tailclip.engine.logger import METRICS_FILE, read_metrics
from tailclip.engine.run_folder import NEWEST_CHECKPOINT, restore_run_files, resume_checkpoint
from tailclip.engine.run_lock import RunLock
from tailclip.engine.training_state import RESUMABLE_OPTIONS
from tailclip.errors import TailCLIPError
from tailclip.tools.disk_estimate import sweep_disk_line
from tailclip.tools.sweep_report import SWEEP_FILE, read_sweep_file
from tailclip.wording import count, percent

STUDY_FILE = "optuna.db"
SEARCH_SPACE_ATTR = "search_space"  # the study's --range and --grid values, as last given
# A sweep compares what runs learn: an option of how a run runs would train the same model
# in every setting (`run_dir` is the sweep's to choose; give the others with --set).
RESERVED_KEYS = {"seed": "use --seeds",
                 **{name: "it says how a run runs, not what it learns (give it with --set)"
                    for name in options_with_role(RUNNING)}}
TRAIN_SCRIPT = REPO_ROOT / "train.py"


class SweepError(TailCLIPError):
    """A sweep's arguments are inconsistent (a bad --grid, --variant or --range)."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of a sweep: a name and its overrides, as ``--set`` takes them."""
    name: str
    overrides: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    name: str  # the run folder's name: <setting>_seed<k>
    overrides: tuple[str, ...]  # the setting's, then seed and run_dir
    cfg: Config


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """``text`` split at the separators outside brackets and quotes, so that
    ``['clip','bal'],['bal']`` is two values."""
    parts, depth, quote, start = [], 0, None, 0
    for index, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part.strip() for part in parts]


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` -> ``[0, 1, 2]``."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise SweepError(f"--seeds {text}: expected comma-separated integers") from None
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise SweepError(f"--seeds {text}: expected distinct integers >= 0")
    return seeds


def _checked_override(key: str, value: str, flag: str) -> str:
    """``key=value`` after ``--set``'s parsing (an unknown key is an error here)."""
    if key in RESERVED_KEYS:
        raise SweepError(f"{flag}: {key} cannot be swept: {RESERVED_KEYS[key]}")
    if not value:
        raise SweepError(f"{flag}: {key} has an empty value")
    try:
        problem = option_problem(*parse_override(f"{key}={value}"))
    except ValueError as error:
        raise SweepError(f"{flag}: {error}") from None
    if problem:  # named here, not as the --set it becomes
        raise SweepError(f"{flag}: {key}: {problem}")
    return f"{key}={value}"


def parse_grid(text: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2,...`` -> ``(KEY, ["KEY=V1", "KEY=V2", ...])``."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SweepError(f"--grid {text}: expected KEY=V1,V2,...")
    overrides = [_checked_override(key, value, f"--grid {text}") for value in split_top_level(values)]
    if len(set(overrides)) != len(overrides):
        raise SweepError(f"--grid {text}: a value is repeated")
    return key, overrides


def parse_variant(text: str) -> Setting:
    """``NAME:KEY=V[,KEY=V...]`` -> a named setting (``NAME:`` alone is the config as is)."""
    name, sep, body = text.partition(":")
    name = name.strip()
    if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+=-]*", name):
        raise SweepError(f"--variant {text}: expected NAME:KEY=V[,KEY=V...] with a NAME of "
                         f"letters, digits and .+=-")
    overrides = []
    for item in split_top_level(body) if body.strip() else []:
        key, eq, value = item.partition("=")
        if not eq:
            raise SweepError(f"--variant {text}: {item!r} is not KEY=VALUE")
        overrides.append(_checked_override(key.strip(), value.strip(), f"--variant {text}"))
    return Setting(name, tuple(overrides))


def value_label(override: str) -> str:
    """A folder-name-safe ``key=value``: ``loss_function=['clip','bal']`` -> ``loss_function=clip+bal``."""
    key, _, text = override.partition("=")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(value, (list, tuple)):
        text = "+".join(map(str, value))
    elif isinstance(value, str):
        text = value
    return f"{key}={re.sub(r'[^A-Za-z0-9.+=-]', '-', text)}"


def expand(grid: list[tuple[str, list[str]]], variants: list[Setting]) -> list[Setting]:
    """Every variant (or the config as is) combined with every combination of grid values;
    the names join the variant's name and ``key=value`` of each grid key."""
    keys = [key for key, _ in grid]
    if len(set(keys)) != len(keys):
        raise SweepError(f"--grid names a key twice: {', '.join(sorted({k for k in keys if keys.count(k) > 1}))}")
    settings = []
    for variant in variants or [Setting("", ())]:
        clash = set(keys) & {override.partition("=")[0] for override in variant.overrides}
        if clash:
            raise SweepError(f"--variant {variant.name} sets {', '.join(sorted(clash))}, which --grid sweeps")
        for combination in itertools.product(*(values for _, values in grid)):
            name = "_".join(filter(None, [variant.name, *map(value_label, combination)])) or "config"
            settings.append(Setting(name, variant.overrides + combination))
    names = [setting.name for setting in settings]
    if len(set(names)) != len(names):
        raise SweepError(f"two settings share the name {next(n for n in names if names.count(n) > 1)!r}")
    return settings


def sweep_folder(config_path, sets, name: str) -> Path:
    return resolve_path(load_config(config_path, sets).run_dir) / name


def plan(config_path, sets: list[str], settings: list[Setting], seeds: list[int],
         folder: Path) -> list[PlannedRun]:
    """Every run, its config built and checked (so a bad value fails before any run)."""
    runs = []
    for setting in settings:
        for seed in seeds:
            overrides = (*setting.overrides, f"seed={seed}", f"run_dir={folder}")
            runs.append(PlannedRun(f"{setting.name}_seed{seed}", overrides,
                                   load_config(config_path, [*sets, *overrides])))
    return runs


def record_sweep(folder: Path, config_path, sets: list[str], swept: list[str], settings: list[str]) -> None:
    """Add this invocation's swept keys and settings to ``sweep.json`` (what the report
    reads for the order of its rows and the published figures of the config); a sweep of
    another config or other ``--set`` values under the same name is refused."""
    known = read_sweep_file(folder) or {"swept": [], "settings": []}
    if "config" in known:
        check_same_base(folder / SWEEP_FILE, known, config_path, sets)
    write_json(folder / SWEEP_FILE, {
        "config": str(config_path),
        "sets": list(sets),
        "swept": known["swept"] + [key for key in swept if key not in known["swept"]],
        "settings": known["settings"] + [name for name in settings if name not in known["settings"]],
    })


def check_same_base(path: Path, known: dict, config_path, sets: list[str]) -> None:
    """A sweep name holds one config and one set of ``--set`` values (more swept keys and
    values may join it): another's runs of the same setting names would be skipped or resumed
    as this one's, and its rows reported in one table with them. The options a resume may
    change (more epochs, how the runs run) do not make another sweep: they extend this one."""
    recorded_sets = known.get("sets", list(sets))  # a sweep.json written before it kept them: not compared
    if (Path(known["config"]).resolve() == Path(config_path).resolve()
            and _learnt(recorded_sets) == _learnt(sets)):
        return
    raise SweepError(f"{path} holds the sweep {path.parent.name!r} of {_base(known['config'], recorded_sets)}, "
                     f"not {_base(config_path, sets)}: give this one another --name")


def _learnt(sets: list[str]) -> list[str]:
    return sorted(text for text in sets if text.partition("=")[0].strip() not in RESUMABLE_OPTIONS)


def _base(config_path, sets: list[str]) -> str:
    return " ".join([f"--config {config_path}", *(f"--set {override}" for override in sets)])


def run_progress(run_dir: Path, epochs: int) -> str:
    """``"finished"``, ``"resume"`` (a newest checkpoint to continue from) or ``"fresh"``.

    A run is finished when ``metrics.jsonl`` holds its last epoch: that line is written
    just before the epoch's checkpoints, so a run killed in between is finished already
    as far as its results go. The run's files are first restored from its checkpoint
    where they are behind it or damaged (a lost last line, say).
    """
    restore_run_files(run_dir)
    metrics = run_dir / METRICS_FILE
    if metrics.is_file():
        records = read_metrics(run_dir)
        if records and records[-1]["epoch"] >= epochs:
            return "finished"
    return "resume" if resume_checkpoint(run_dir) is not None else "fresh"


def prepare(run: PlannedRun) -> tuple[str, bool]:
    """The run's progress, and whether its folder holds files to overwrite: those of a run
    stopped before its first checkpoint, which a fresh start replaces."""
    run_dir = Path(run.cfg.run_dir) / run.name
    progress = run_progress(run_dir, run.cfg.epochs)
    return progress, progress == "fresh" and run_dir.exists()


def keep_best_only(run: PlannedRun) -> None:
    """Delete the newest checkpoint of ``run`` once it has finished: the sweep's report and
    compare.py read its config.json and metrics.jsonl, test.py and predict.py its best
    checkpoints, TensorBoard its events; only continuing the run needs the newest."""
    run_dir = Path(run.cfg.run_dir) / run.name
    if run_progress(run_dir, run.cfg.epochs) != "finished" or not (run_dir / NEWEST_CHECKPOINT).is_file():
        return
    lock = RunLock.take(run_dir)
    try:
        (run_dir / NEWEST_CHECKPOINT).unlink()
    finally:
        lock.release()


def run_in_process(runs: list[PlannedRun], on_epoch: Callable | None = None,
                   log: Callable[[str], None] = print, numbered: bool = True,
                   keep_best: bool = False) -> dict[str, str]:
    """Train the runs one after another in this process; ``{run name: outcome}``. Each is
    announced as ``[k/n]`` of the runs given, unless not ``numbered`` (a search's trial, whose
    count is open). With ``keep_best``, each finished run keeps its best checkpoints only
    (`keep_best_only`).

    A run whose loss diverges is recorded as failed and the sweep goes on; Ctrl-C
    (``TrainingInterrupted``) stops the sweep after the run saved its checkpoint.
    """
    outcomes = {}
    for index, run in enumerate(runs, 1):
        progress, overwrite = prepare(run)
        log((f"[{index}/{len(runs)}] " if numbered else "") + f"{run.name}: "
            + {"finished": "finished, skipped", "resume": "resuming", "fresh": "starting"}[progress])
        if progress == "finished":
            outcomes[run.name] = "skipped"
        else:
            try:
                training.train(run.cfg, run.name, resume=progress == "resume", overwrite=overwrite,
                               on_epoch=on_epoch)
                outcomes[run.name] = "trained" if progress == "fresh" else "resumed"
            except training.NonFiniteLossError as error:
                log(f"{run.name} failed: {error}")
                outcomes[run.name] = "failed"
        if keep_best:
            keep_best_only(run)
    return outcomes


def train_command(config_path, sets: list[str], run: PlannedRun, progress: str, overwrite: bool) -> list[str]:
    command = [sys.executable, str(TRAIN_SCRIPT), f"--config={config_path}",
               f"--run-name={run.name}"]
    for override in (*sets, *run.overrides):
        command += ["--set", override]
    return command + (["--resume"] if progress == "resume" else []) + (["--overwrite"] if overwrite else [])


def run_on_gpus(runs: list[PlannedRun], config_path, sets: list[str], gpus: list[str],
                log: Callable[[str], None] = print, poll_seconds: float = 1.0,
                keep_best: bool = False) -> dict[str, str]:
    """Train the runs as ``train.py`` processes, one per GPU at a time; ``{run: outcome}``.

    Each process sees only its GPU, and writes its output to ``<sweep>/logs/<run>.log``.
    A process stopped by a signal (Ctrl-C reaches the whole process group) stops the sweep
    once the running ones have saved their checkpoints.
    """
    outcomes, pending, active, free = {}, deque(runs), {}, list(gpus)
    stopping = False
    while pending or active:
        while pending and free and not stopping:
            run = pending.popleft()
            progress, overwrite = prepare(run)
            if progress == "finished":
                log(f"{run.name}: finished, skipped")
                outcomes[run.name] = "skipped"
                if keep_best:
                    keep_best_only(run)
                continue
            gpu = free.pop(0)
            log_path = Path(run.cfg.run_dir) / "logs" / f"{run.name}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log(f"{run.name}: {'resuming' if progress == 'resume' else 'starting'} on GPU {gpu} (log: {log_path})")
            with open(log_path, "a") as output:
                process = subprocess.Popen(train_command(config_path, sets, run, progress, overwrite),
                                           env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu},
                                           stdout=output, stderr=subprocess.STDOUT)
            active[process] = (run, gpu, "trained" if progress == "fresh" else "resumed")
        try:
            time.sleep(poll_seconds)
        except KeyboardInterrupt:
            stopping = True  # the children got the Ctrl-C too and are saving
        for process in [p for p in active if p.poll() is not None]:
            run, gpu, outcome = active.pop(process)
            free.append(gpu)
            if process.returncode in (129, 130, 143):  # SIGHUP, Ctrl-C, SIGTERM: saved, stopping
                stopping = True
                outcomes[run.name] = "interrupted"
            else:
                outcomes[run.name] = outcome if process.returncode == 0 else "failed"
            log(f"{run.name}: {outcomes[run.name]} (exit {process.returncode})")
            if keep_best:
                keep_best_only(run)
        if stopping and not active:
            break
    return outcomes


def visible_gpus() -> list[str]:
    """The GPUs a sweep may use: ``CUDA_VISIBLE_DEVICES``'s entries, or all."""
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [entry.strip() for entry in visible.split(",") if entry.strip()][:count]
    return [str(index) for index in range(count)]


def run_grid(config_path, sets: list[str], settings: list[Setting], seeds: list[int], name: str,
             gpus: list[str] | None = None, log: Callable[[str], None] = print,
             keep_best: bool = False, estimate_only: bool = False) -> dict[str, str]:
    """Plan, record and train a sweep, saying first the disk its checkpoints will take; the
    outcome of every run. With ``keep_best``, finished runs keep their best checkpoints only;
    with ``estimate_only``, nothing is written or trained."""
    folder = sweep_folder(config_path, sets, name)
    runs = plan(config_path, sets, settings, seeds, folder)
    if gpus is None:
        gpus = visible_gpus() if runs[0].cfg.device in ("auto", "cuda") else []
    log(sweep_disk_line([run.cfg for run in runs], keep_best, at_once=max(1, len(gpus))))
    if estimate_only:
        return {}
    swept = list(dict.fromkeys(o.partition("=")[0] for s in settings for o in s.overrides))
    record_sweep(folder, config_path, sets, swept, [setting.name for setting in settings])
    if len(gpus) > 1:
        return run_on_gpus(runs, config_path, sets, gpus, log, keep_best=keep_best)
    return run_in_process(runs, log=log, keep_best=keep_best)


# --- search -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Range:
    """A search range ``KEY=LOW:HIGH[:log]``: integers when both ends are, else floats."""
    key: str
    low: float
    high: float
    log: bool

    def suggest(self, trial):
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


def parse_range(text: str) -> Range:
    key, sep, body = text.partition("=")
    key, parts = key.strip(), body.split(":")
    flag = f"--range {text}"
    if not sep or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise SweepError(f"{flag}: expected KEY=LOW:HIGH or KEY=LOW:HIGH:log")
    ends = []
    for part in parts[:2]:
        try:
            value = parse_override(f"{key}={part}")[1]
        except ValueError as error:
            raise SweepError(f"{flag}: {error}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SweepError(f"{flag}: {key}: {part!r} is not a number")
        _checked_override(key, part, flag)  # a reserved key, a value the option refuses
        ends.append(value)
    low, high = ends
    if not low < high:
        raise SweepError(f"{flag}: LOW must be below HIGH")
    if len(parts) == 3 and low <= 0:
        raise SweepError(f"{flag}: a log range needs LOW > 0")
    return Range(key, low, high, len(parts) == 3)


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise SweepError("--search needs Optuna: pip install optuna (or: pip install -r "
                         "requirements-dev.txt)") from None
    return optuna


def run_search(config_path, sets: list[str], ranges: list[Range], choices: list[tuple[str, list[str]]],
               seeds: list[int], name: str, trials: int, log: Callable[[str], None] = print):
    """Sample settings with Optuna's TPE sampler until the study holds ``trials`` complete
    or pruned trials; returns the study.

    Trial k trains folder ``trial<k>_seed<s>`` for each seed in turn and reports the test
    mAP after every epoch (step = seed index * epochs + epoch) to a median pruner, which
    stops trials that fall below the median of the earlier ones at the same step. Its value
    is the last epoch's test mAP, averaged over the seeds. The study lives in
    ``<sweep>/optuna.db`` (SQLite): running the command again continues it, and several
    processes (one per GPU) may share it. A trial that failed (Ctrl-C, a crash) is tried
    again with its parameters, resuming its runs.
    """
    optuna = import_optuna()
    folder = sweep_folder(config_path, sets, name)
    swept = [r.key for r in ranges] + [key for key, _ in choices]
    if len(set(swept)) != len(swept):
        raise SweepError("--range and --grid name the same key twice")
    corners = [Setting("low", tuple(f"{r.key}={r.low!r}" for r in ranges)),
               Setting("high", tuple(f"{r.key}={r.high!r}" for r in ranges))]
    plan(config_path, sets, corners + [Setting("choice", (value,)) for _, values in choices
                                       for value in values], seeds[:1], folder)
    record_sweep(folder, config_path, sets, swept, [])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{folder / STUDY_FILE}",
                                direction="maximize", sampler=optuna.samplers.TPESampler(),
                                pruner=optuna.pruners.MedianPruner(), load_if_exists=True)
    _warn_of_a_changed_search_space(study, ranges, choices, log)
    _retry_failed_trials(study, optuna)
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(states=finished_states))
    log(f"study {name} ({folder / STUDY_FILE}): {done} of {trials} trials done")
    if done < trials:
        objective = _objective(config_path, sets, ranges, choices, seeds, folder, optuna, log)
        study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished_states)])
    if study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        log(f"best trial {study.best_trial.user_attrs['run']}: mAP {percent(study.best_value)}, "
            f"{study.best_params}")
    return study


def _warn_of_a_changed_search_space(study, ranges: list[Range], choices, log) -> None:
    """Record the study's ranges and choices; warn when a continued study is given others
    (its earlier trials, which still count, were sampled from the old ones)."""
    space = {**{r.key: f"{r.low}:{r.high}" + (":log" if r.log else "") for r in ranges},
             **{key: ",".join(value.partition("=")[2] for value in values) for key, values in choices}}
    earlier = study.user_attrs.get(SEARCH_SPACE_ATTR)
    if earlier is not None and earlier != space:
        changed = ", ".join(f"{key}: {earlier.get(key, 'not searched')} -> {space.get(key, 'not searched')}"
                            for key in sorted({*earlier, *space}) if earlier.get(key) != space.get(key))
        log(f"warning: study {study.study_name} continues with another search space ({changed}); its "
            f"{count(len(study.trials), 'earlier trial')} were sampled from the old one and still count "
            "(a new --name starts a fresh study)")
    study.set_user_attr(SEARCH_SPACE_ATTR, space)


def _retry_failed_trials(study, optuna) -> None:
    """Queue again, once, the parameters of each failed trial, with its run folder."""
    runs_tried = {t.user_attrs.get("run") for t in study.trials if t.state != optuna.trial.TrialState.FAIL}
    for trial in study.get_trials(states=(optuna.trial.TrialState.FAIL,)):
        run = trial.user_attrs.get("run")
        if run and run not in runs_tried:
            study.enqueue_trial(trial.params, user_attrs={"run": run})
            runs_tried.add(run)


def _objective(config_path, sets, ranges, choices, seeds, folder, optuna, log):
    def objective(trial) -> float:
        run = trial.user_attrs.get("run") or f"trial{trial.number:04d}"
        trial.set_user_attr("run", run)
        overrides = ([f"{r.key}={r.suggest(trial)!r}" for r in ranges]
                     + [f"{key}={trial.suggest_categorical(key, [v.partition('=')[2] for v in values])}"
                        for key, values in choices])
        runs = plan(config_path, sets, [Setting(run, tuple(overrides))], seeds, folder)
        last_mAPs = []
        for seed_index, planned in enumerate(runs):
            def prune_below_median(epoch: int, record: dict, seed_index=seed_index, planned=planned) -> None:
                trial.report(record["val/mAP"], seed_index * planned.cfg.epochs + epoch)
                if trial.should_prune():
                    log(f"{planned.name}: pruned after epoch {epoch}")
                    raise optuna.TrialPruned()
            if run_in_process([planned], on_epoch=prune_below_median, log=log,
                              numbered=False)[planned.name] == "failed":
                raise optuna.TrialPruned()  # a diverging setting: stopped, not to be retried
            last_mAPs.append(read_metrics(Path(planned.cfg.run_dir) / planned.name)[-1]["val/mAP"])
        return sum(last_mAPs) / len(last_mAPs)
    return objective
