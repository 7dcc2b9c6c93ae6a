"""What a training checkpoint holds, and how a run resumes from it.

Every checkpoint is the run's record: the model (`tailclip.engine.saved_model`), the config,
the progress, and the run's id with the ``metrics.jsonl`` record of every finished epoch
(`TrainState`), from which the run's other files are rewritten (`tailclip.engine.logger`).
The newest checkpoint also holds what ``--resume`` needs to continue exactly where the run
stopped: optimiser, schedule, scaler, the unfinished epoch's meter and every process's
random-number states. The best checkpoints, which evaluation, prediction and comparison
read, leave those out (`BEST_CHECKPOINT_LEAVES_OUT`): the optimiser alone is twice the
weights. A resumed run trains with its own saved config, changed only in the options that
say how it goes on (`RESUMABLE_OPTIONS`). The file format itself (atomic writes, safe
loading) is `tailclip.engine.checkpoint`'s.
"""
import dataclasses
import math
from pathlib import Path

from tailclip.config import RUNNING, SCHEDULE, Config, ConfigError, options_with_role
from tailclip.engine.checkpoint import FORMAT, VERSION, restore_rng_states, with_checksum
from tailclip.engine.distributed import rank_and_world
from tailclip.engine.logger import MAP_UNIT, new_run_id, say
from tailclip.engine.run_folder import NEWEST_CHECKPOINT
from tailclip.engine.saved_model import load_model_state, model_state


@dataclasses.dataclass
class TrainState:
    """Progress of a run; saved in every checkpoint."""
    epoch: int = 0  # finished epochs
    step_in_epoch: int = 0  # steps of epoch `epoch` already taken (a run stopped mid-epoch)
    global_step: int = 0
    nonfinite_steps: int = 0
    last_loss: float = math.nan  # of the last step taken (for the progress bar)
    best_mAP: float = -math.inf
    best_mAP_epoch: int = 0
    best_mAP_tail: float = -math.inf
    best_mAP_tail_epoch: int = 0
    start_mAP: float | None = None  # before training: the untrained (or zero-shot) model
    last_metrics: dict = dataclasses.field(default_factory=dict)
    run_id: str = dataclasses.field(default_factory=new_run_id)  # made at the run's start
    records: list[dict] = dataclasses.field(default_factory=list)  # metrics.jsonl's, epoch 0 included


# What a best checkpoint leaves out of the newest one's contents, as a resume from it says
# (None: nothing to say; a best checkpoint is written at the end of an epoch, with no
# unfinished one). Only continuing the run needs them.
BEST_CHECKPOINT_LEAVES_OUT = {"optimizer": "the optimiser state (AdamW restarts its moments)",
                              "rng": "the random-number states", "scheduler": None, "scaler": None,
                              "epoch_progress": None, "label_embeddings": None}


def training_checkpoint(cfg: Config, data, trainer, state: TrainState, meter, rng: list[dict]) -> dict:
    """Everything needed to resume training, or to use the model without the data; ``rng``
    holds the random-number states of every process, by rank (`checkpoint.rng_states`)."""
    return with_checksum({
        "format": FORMAT,
        "version": VERSION,
        **model_state(trainer.model, cfg),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "state": dataclasses.asdict(state),
        "mAP_unit": MAP_UNIT,
        "epoch_progress": meter.state_dict() if state.step_in_epoch else None,
        "label_embeddings": trainer.model.cached_label_emb if state.step_in_epoch else None,
        "config": cfg.to_dict(),
        "backbone": cfg.model_name,
        "class_names": list(data.class_names),
        "label_prompts": list(data.label_prompts),
        "groups": data.groups,
        "rng": rng,
    })


def checkpoint_as(name: str, content: dict) -> dict:
    """The checkpoint file ``name`` of `training_checkpoint`'s ``content``: the newest whole,
    a best one without what only continuing the run needs."""
    if name == NEWEST_CHECKPOINT:
        return content
    return with_checksum({key: value for key, value in content.items() if key not in BEST_CHECKPOINT_LEAVES_OUT})


def restore_training(checkpoint: dict, trainer, meter) -> TrainState:
    """Restore model, optimiser, scaler, progress and this process's random states; the
    schedule is the caller's to rebuild at the epoch reached (`optim.build_scheduler`).
    What the checkpoint lacks (a best checkpoint's optimiser, ...; an old checkpoint's
    records) is said in one line each."""
    load_model_state(trainer.model, checkpoint, NEWEST_CHECKPOINT)
    missing = [what for key, what in BEST_CHECKPOINT_LEAVES_OUT.items() if what and key not in checkpoint]
    if missing:
        say(f"resume: the checkpoint holds the weights and progress of epoch {checkpoint['state']['epoch']}, "
            f"not {', '.join(missing)}: the run goes on from there, not as an unbroken run would")
    if "optimizer" in checkpoint:
        trainer.optimizer.load_state_dict(checkpoint["optimizer"])
        trainer.scaler.load_state_dict(checkpoint["scaler"])
    state = TrainState(**checkpoint["state"])
    if "records" not in checkpoint["state"]:
        say(f"resume: the checkpoint was written before checkpoints kept the run's records: its "
            f"metrics.jsonl is kept as it is (up to epoch {state.epoch}), and the run gets the id {state.run_id}")
    if checkpoint.get("epoch_progress") is not None:
        meter.load_state_dict(checkpoint["epoch_progress"], trainer.device)
    if checkpoint.get("label_embeddings") is not None:
        trainer.model.cached_label_emb = checkpoint["label_embeddings"].to(trainer.device)
    if "rng" in checkpoint:
        _restore_process_rng(checkpoint["rng"])
    return state


def _restore_process_rng(states: list[dict] | dict) -> None:
    """This process's own random states: a resumed run draws (random flips of the JPEG
    path, ...) as an unbroken one. With another number of processes than the run had, the
    draws differ; each process takes the states of rank ``rank % saved processes``."""
    states = [states] if isinstance(states, dict) else states  # saved by one process, before per-process states
    rank, world = rank_and_world()
    if world != len(states):
        say(f"resume: the run had {len(states)} process(es), now {world}: random draws (the "
            "flips of the JPEG path) differ from an unbroken run")
    restore_rng_states(states[rank % len(states)])


# Options a resumed run may take from the command line: those that change how it goes on,
# not what it has trained so far (`epochs` and `lr` rebuild the cosine schedule from the
# epoch reached, `optim.build_scheduler`; the others say how the run runs). Every other option
# (model, data, loss, batch size, optimiser, seed, ...) is the run's own and cannot change.
RESUMABLE_OPTIONS = options_with_role(SCHEDULE, RUNNING)


def resumed_config(checkpoint: dict, cfg: Config, given, path) -> Config:
    """The config a resumed run trains with: the run's own (saved in its checkpoint ``path``),
    with the values of ``cfg`` for the options named in ``given`` (those set on the command
    line now; None: every option of ``cfg``) and its ``run_dir`` (where the run is now).

    A given option outside `RESUMABLE_OPTIONS` whose value differs from the run's is a
    `ConfigError` naming it. Changes are reported in one line each.
    """
    saved = Config.from_dict(checkpoint["config"], source=str(path))
    given = set(cfg.to_dict() if given is None else given) | {"run_dir"}
    changed = {key for key in given if getattr(cfg, key) != getattr(saved, key)}
    fixed = sorted(changed - set(RESUMABLE_OPTIONS))
    if fixed:
        key = fixed[0]
        raise ConfigError(
            f"cannot resume {Path(path).parent} with {key} = {getattr(cfg, key)!r}: the run has "
            f"{key} = {getattr(saved, key)!r}, and {key} cannot change during a run (a resumed run "
            f"may change {', '.join(options_with_role(SCHEDULE))} and how it runs: "
            f"{', '.join(options_with_role(RUNNING))}); train a new run with --run-name NAME")
    resumed = dataclasses.replace(saved, **{key: getattr(cfg, key) for key in changed})
    for key in sorted(changed - {"run_dir"}):
        say(f"resume: {key} = {getattr(resumed, key)!r} from now on (the run had {getattr(saved, key)!r})")
    return resumed
