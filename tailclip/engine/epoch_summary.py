"""How a training's progress reads: each epoch's line, the best epochs so far with the
checkpoints they call for, and the run's final summary and line."""
import math
from pathlib import Path

from tailclip.config import Config
from tailclip.engine.evaluation import val_line
from tailclip.engine.run_folder import BEST_MAP_CHECKPOINT, BEST_TAIL_CHECKPOINT, NEWEST_CHECKPOINT
from tailclip.engine.training_state import TrainState
from tailclip.wording import percent


def epoch_line(epoch: int, epochs: int, record: dict) -> str:
    line = (f"epoch {epoch}/{epochs}  train loss {record.get('train/loss', math.nan):.4f}  "
            f"{val_line(record)}  {record['time/epoch_s']:.1f} s, "
            f"{record['time/train_images_per_s']:.0f} img/s")
    if "data/unreadable_train_images" in record:
        line += (f"  unreadable images left out: {record['data/unreadable_train_images']} train, "
                 f"{record['data/unreadable_test_images']} test")
    return line


def position(state: TrainState) -> str:
    """Where a run stands: "after epoch 3", or mid-epoch "after epoch 3, step 5 of epoch 4"."""
    return f"after epoch {state.epoch}" + (f", step {state.step_in_epoch} of epoch {state.epoch + 1}"
                                           if state.step_in_epoch else "")


def final_line(state: TrainState, summary: dict) -> str:
    return (f"val mAP: start {percent(summary['start_val_mAP'])} (before training) -> end "
            f"{percent(summary['last_val_mAP'])} (after epoch {state.epoch}); best "
            f"{percent(state.best_mAP)} (epoch {state.best_mAP_epoch}), best tail mAP "
            f"{percent(state.best_mAP_tail)} (epoch {state.best_mAP_tail_epoch})")


def update_best(state: TrainState, record: dict, cfg: Config) -> list[str]:
    """Update the progress after an evaluation; the checkpoint files to write.

    The newest checkpoint comes last: once it records a best value, that best file exists
    (a run killed in between redoes the epoch on --resume).
    """
    names = []
    if record["val/mAP"] > state.best_mAP:
        state.best_mAP, state.best_mAP_epoch = record["val/mAP"], state.epoch
        names += [BEST_MAP_CHECKPOINT] if cfg.save_best_mAP_checkpoint else []
    if record.get("val/mAP_tail", math.nan) > state.best_mAP_tail:
        state.best_mAP_tail, state.best_mAP_tail_epoch = record["val/mAP_tail"], state.epoch
        names += [BEST_TAIL_CHECKPOINT] if cfg.save_best_tail_mAP_checkpoint else []
    names += [NEWEST_CHECKPOINT] if cfg.save_newest_checkpoint else []
    state.last_metrics = {key: value for key, value in record.items() if key.startswith("val/")}
    return names


def run_summary(state: TrainState, run_dir: Path) -> dict:
    return {"run_dir": str(run_dir), "epochs": state.epoch, "start_val_mAP": state.start_mAP,
            "last_val_mAP": state.last_metrics.get("val/mAP"),
            "best_val_mAP": state.best_mAP, "best_val_mAP_epoch": state.best_mAP_epoch,
            "best_val_mAP_tail": state.best_mAP_tail,
            "best_val_mAP_tail_epoch": state.best_mAP_tail_epoch}
