"""A run held against the authors' runs of the same settings: what ``compare.py`` runs.

The figures follow the paper's protocol: the best epoch is the one of the highest test mAP
(selected on the test split), read with its head, medium and tail mAP; the last epoch is the
newest evaluation. A run still training is held against the authors' first epochs only (as
many as it has logged), so that its verdict speaks of the same stage of training. The
verdict per figure: within the authors' value (one run) or range (several), or above or
below it by so many percentage points, at the two decimals shown; then each way in which ours
computed otherwise than the authors' code (``numerics_notes``: "within; trained in bf16,
theirs in float32"). Each of the authors' runs is shown with the loss it trained (``CLASS_LOSSES``);
their runs of the same settings but for a loss that no option of ours trains (their plain loss
summed over the batch) are listed as left out.

Outputs, in the run folder: ``comparison.md`` (the figures and the per-epoch table, ours
against the authors' minimum and maximum), ``comparison.json`` (the same, mAP as fractions)
and ``comparison.png`` (our curves over theirs); with ``tensorboard=True`` also each
matching authors' run as a TensorBoard run in ``authors/<run>/``, with our tags and units.
"""
import json
import math
from pathlib import Path

from tailclip.engine.files import write_figure, write_json, write_text
from tailclip.engine.logger import CONFIG_FILE, MAP_UNIT, METRICS_FILE, percent_scalars, read_metrics
from tailclip.errors import TailCLIPError
from tailclip.metrics import MAP_LABELS, MAP_NAMES
from tailclip.tools.authors_record import (
    CLASS_LOSSES,
    AuthorsRun,
    check_record_speaks_to,
    format_value,
    load_record,
    matching_runs,
    nearest_runs,
    numerics_notes,
    unreproduced_runs,
)
from tailclip.wording import percent

EPOCHS = ("best", "last")
CURVES = ("val/mAP", "val/mAP_head", "val/mAP_medium", "val/mAP_tail", "train/loss", "val/loss")
EXPORTED_TAGS = ("train/loss", "train/mAP", "train/mAP_head", "train/mAP_medium", "train/mAP_tail",
                 "train/AUROC", "val/loss", "val/mAP", "val/mAP_head", "val/mAP_medium", "val/mAP_tail",
                 "val/AUROC")
AUTHORS_FOLDER = "authors"
OUTPUT_FILES = ("comparison.md", "comparison.json", "comparison.png")


class ComparisonError(TailCLIPError):
    """A folder that is not a TailCLIP run folder, or a run that has logged no epoch."""


def read_run(run_dir, evaluated: bool = True) -> tuple[dict, list[dict]]:
    """A run folder's effective config and its evaluations after training epochs (epoch 0,
    the evaluation before training, has no counterpart in the authors' runs); a
    `ComparisonError` when there is none yet, unless ``evaluated`` is False."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / METRICS_FILE).is_file():
        raise ComparisonError(f"{run_dir} is not a TailCLIP run folder (no {CONFIG_FILE} and {METRICS_FILE})")
    try:
        config = json.loads((run_dir / CONFIG_FILE).read_text())
        records = [record for record in read_metrics(run_dir) if record.get("epoch", 0) > 0]
    except (ValueError, AttributeError) as error:
        raise ComparisonError(f"{run_dir}: {CONFIG_FILE} or {METRICS_FILE} is not TailCLIP's JSON ({error})") from None
    if not isinstance(config, dict) or "dataset" not in config:
        raise ComparisonError(f"{run_dir / CONFIG_FILE} is not a TailCLIP config")
    records = [record for record in records if _finite(record.get("val/mAP"))]
    if evaluated and not records:
        raise ComparisonError(f"{run_dir} has logged no evaluation after a training epoch yet")
    return config, records


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def best_and_last(records) -> dict:
    """``{"best": record, "last": record}``: the highest test mAP (the first of equal maxima) and
    the newest."""
    return {"best": max(records, key=lambda record: record["val/mAP"]), "last": records[-1]}


def _in_points(value) -> float | None:
    return round(100 * value, 2) if _finite(value) else None


def verdict(ours: float | None, low: float | None, high: float | None) -> str:
    """"within", "above by X" or "below by X" (percentage points), compared at two decimals."""
    ours, low, high = _in_points(ours), _in_points(low), _in_points(high)
    if ours is None or low is None:
        return "n/a"
    if ours > high:
        return f"above by {ours - high:.2f}"
    if ours < low:
        return f"below by {low - ours:.2f}"
    return "within"


def authors_summary(run: AuthorsRun, up_to_epoch: int | None = None) -> dict:
    """A run of the authors: its names, how far it ran, and its best and last epochs' figures
    (over its first ``up_to_epoch`` epochs when given)."""
    epochs = run.up_to(up_to_epoch) if up_to_epoch else run.epochs
    chosen = best_and_last(epochs)
    return {"run": run.label, "names": list(run.names), "commit": run.commit,
            "loss": run.class_loss, "loss_evidence": run.loss_evidence,
            "epochs_logged": len(run.epochs), "epochs_planned": run.planned_epochs, "complete": run.complete,
            **{f"{when}_epoch": chosen[when]["epoch"] for when in EPOCHS},
            **{f"{when}_{figure}": chosen[when].get(f"val/{figure}") for when in EPOCHS for figure in MAP_NAMES}}


def compare(run_dir, runs: list[AuthorsRun] | None = None) -> dict:
    """The comparison of one run folder (fractions), as ``comparison.json`` holds it."""
    config, records = read_run(run_dir)
    return compare_records(run_dir, config, records, load_record() if runs is None else runs)


def compare_records(run_dir, config: dict, records: list[dict], runs: list[AuthorsRun]) -> dict:
    """``compare`` of a run's config and records (epochs >= 1, as ``read_run`` gives them)."""
    check_record_speaks_to(config)
    matched = matching_runs(config, runs)
    ours = best_and_last(records)
    last_epoch = records[-1]["epoch"]
    finished = last_epoch >= config.get("epochs", last_epoch)
    result = {"run": str(Path(run_dir)), "mAP_unit": MAP_UNIT, "epochs_logged": last_epoch,
              "epochs_planned": config.get("epochs"), "finished": finished,
              "ours": {**{f"{when}_epoch": ours[when]["epoch"] for when in EPOCHS},
                       **{f"{when}_{figure}": ours[when].get(f"val/{figure}") for when in EPOCHS
                          for figure in MAP_NAMES}},
              "numerics": numerics_notes(config), "authors": [], "figures": [], "per_epoch": [], "nearest": [],
              "unreproduced": [authors_summary(run) for run in unreproduced_runs(config, runs)]}
    if not matched:
        result["nearest"] = [{**authors_summary(run), "differences": [
            {"option": d.option, "ours": format_value(d.ours), "theirs": format_value(d.theirs)} for d in found]}
            for run, found in nearest_runs(config, runs)]
        return result
    window = None if finished else last_epoch
    result["authors"] = [authors_summary(run, window) for run in matched]
    for when in EPOCHS:
        for figure in MAP_NAMES:
            key = f"{when}_{figure}"
            theirs = [summary[key] for summary in result["authors"] if _finite(summary[key])]
            low, high = (min(theirs), max(theirs)) if theirs else (None, None)
            result["figures"].append({"figure": figure, "epoch": when, "ours": result["ours"][key],
                                      "authors_min": low, "authors_max": high,
                                      "verdict": "; ".join([verdict(result["ours"][key], low, high),
                                                            *result["numerics"]])})
    result["per_epoch"] = per_epoch_table(records, matched)
    return result


def per_epoch_table(records: list[dict], runs: list[AuthorsRun]) -> list[dict]:
    """Per epoch (ours and theirs together), our test figures and the authors' min and max."""
    ours = {record["epoch"]: record for record in records}
    theirs = {}
    for run in runs:
        for record in run.epochs:
            theirs.setdefault(record["epoch"], []).append(record)
    rows = []
    for epoch in sorted(set(ours) | set(theirs)):
        row = {"epoch": epoch, "authors_runs": len(theirs.get(epoch, []))}
        for figure in MAP_NAMES:
            tag = f"val/{figure}"
            values = [record[tag] for record in theirs.get(epoch, []) if _finite(record.get(tag))]
            row[f"ours_{figure}"] = ours.get(epoch, {}).get(tag)
            row[f"authors_{figure}_min"] = min(values) if values else None
            row[f"authors_{figure}_max"] = max(values) if values else None
        rows.append(row)
    return rows


def _pct(value) -> str:
    return percent(value, digits=2)


def _range(low, high) -> str:
    if not _finite(low):
        return "n/a"
    return _pct(low) if _in_points(low) == _in_points(high) else f"{_pct(low)}-{_pct(high)}"


def _how_far(summary: dict) -> str:
    if summary["complete"]:
        return f"complete ({summary['epochs_planned']} epochs)"
    return f"stopped early, after {summary['epochs_logged']} of {summary['epochs_planned']} epochs"


def _authors_lines(summaries: list[dict]) -> list[str]:
    return [f"- `{s['run']}`" + (f" (the same curve as {', '.join(f'`{n}`' for n in s['names'][1:])})"
                                 if len(s["names"]) > 1 else "")
            + f": {_how_far(s)}; best {_pct(s['best_mAP'])} (epoch {s['best_epoch']}), "
              f"last {_pct(s['last_mAP'])} (epoch {s['last_epoch']})"
            + (f"; trained {CLASS_LOSSES[s['loss']]}" if s["loss"] else "") for s in summaries]


def summary_text(result: dict, per_epoch: bool = False) -> str:
    """The comparison in Markdown (percent): what ``compare.py`` prints, and with the per-epoch
    table what ``comparison.md`` holds."""
    state = "finished" if result["finished"] else "running or stopped"
    lines = [f"# {result['run']} against the authors' runs", "",
             f"Ours: {state}, {result['epochs_logged']} of {result['epochs_planned']} epochs logged.", ""]
    if result["unreproduced"]:
        lines += ["Left out: the authors' runs of these settings but for a loss that no option of ours trains:", "",
                  *_authors_lines(result["unreproduced"]), ""]
    if result["nearest"]:
        lines += ["No run of the authors trained with these settings. The nearest (fewest differing "
                  "settings, ours vs theirs):", ""]
        lines += [line + "; differs in " + (", ".join(f"{d['option']} {d['ours']} vs {d['theirs']}"
                                                     for d in s["differences"]) or "nothing")
                  for line, s in zip(_authors_lines(result["nearest"]), result["nearest"])]
        return "\n".join(lines) + "\n"
    lines += [f"The authors' runs with the same settings ({len(result['authors'])}):", "",
              *_authors_lines(result["authors"]), ""]
    if not result["finished"]:
        lines += [f"Theirs are read over their first {result['epochs_logged']} epochs, as far as ours has run.", ""]
    lines += ["Test mAP (%); best: the epoch of the highest test mAP (selected on the test split, "
              "as in the paper's protocol); last: the newest epoch.", "",
              "| figure | ours | epoch | authors | verdict |", "|---|---|---|---|---|"]
    for row in result["figures"]:
        epoch = result["ours"][f"{row['epoch']}_epoch"]
        lines.append(f"| {MAP_LABELS[row['figure']]} ({row['epoch']}) | {_pct(row['ours'])} | {epoch} "
                     f"| {_range(row['authors_min'], row['authors_max'])} | {row['verdict']} |")
    if per_epoch:
        header = ["epoch", *(f"{MAP_LABELS[f]} {who}" for f in MAP_NAMES for who in ("ours", "authors"))]
        lines += ["", "## Per epoch", "", "Test mAP (%): ours and the authors' minimum-maximum over "
                  "their runs that reached the epoch.", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for row in result["per_epoch"]:
            cells = [str(row["epoch"])]
            for figure in MAP_NAMES:
                cells += [_pct(row[f"ours_{figure}"]),
                          _range(row[f"authors_{figure}_min"], row[f"authors_{figure}_max"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "![our curves over the authors'](comparison.png)"]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], runs: list[AuthorsRun], path: Path, label: str = "authors") -> None:
    """Test mAP, head / medium / tail mAP, training and test loss per epoch: ours over the
    authors' runs (thin grey lines, ``label`` in the legend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(15, 8))
    for axis, tag in zip(axes.flat, CURVES):
        scale = 100 if "mAP" in tag else 1
        for index, run in enumerate(runs):
            points = [(r["epoch"], scale * r[tag]) for r in run.epochs if _finite(r.get(tag))]
            if points:
                axis.plot(*zip(*points), color="0.6", linewidth=1, label=None if index else label)
        points = [(r["epoch"], scale * r[tag]) for r in records if _finite(r.get(tag))]
        if points:
            axis.plot(*zip(*points), color="tab:red", linewidth=2, label="ours")
        axis.set_title(tag + (" (%)" if scale == 100 else ""))
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    write_figure(path, figure, dpi=100)
    plt.close(figure)


def export_tensorboard(run_dir, runs: list[AuthorsRun]) -> list[Path]:
    """Each of ``runs`` as a TensorBoard run ``run_dir/authors/<run>/``: our tag names, mAP
    and AUROC in percent, epoch k at step k as ours. An earlier export there is replaced."""
    from torch.utils.tensorboard import SummaryWriter

    folders = []
    for run in runs:
        folder = Path(run_dir) / AUTHORS_FOLDER / run.label
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("events.out.tfevents.*"):
            old.unlink()
        with SummaryWriter(folder) as writer:
            for record in run.epochs:
                tags = {tag: record[tag] for tag in EXPORTED_TAGS if _finite(record.get(tag))}
                for tag, value in percent_scalars(tags).items():
                    writer.add_scalar(tag, value, global_step=record["epoch"])
        folders.append(folder)
    return folders


def write_comparison(run_dir, runs: list[AuthorsRun] | None = None,
                     tensorboard: bool = False) -> tuple[dict, list[Path]]:
    """Compare a run folder and write ``comparison.md``, ``comparison.json``, ``comparison.png``
    (and with ``tensorboard`` the matching authors' runs) into it; the result and the paths."""
    run_dir = Path(run_dir)
    runs = load_record() if runs is None else runs
    config, records = read_run(run_dir)
    result = compare_records(run_dir, config, records, runs)
    by_label = {run.label: run for run in runs}
    matched = [by_label[summary["run"]] for summary in result["authors"]]
    paths = [run_dir / name for name in OUTPUT_FILES]
    write_text(paths[0], summary_text(result, per_epoch=True))
    write_json(paths[1], result, allow_nan=False)
    if matched:
        plot(records, matched, paths[2])
    else:
        plot(records, [by_label[summary["run"]] for summary in result["nearest"]], paths[2],
             label="authors (nearest settings)")
    if tensorboard:
        paths += export_tensorboard(run_dir, matched)
    return result, paths
