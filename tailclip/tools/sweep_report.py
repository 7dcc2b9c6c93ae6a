"""A sweep's result table and plot: ``results.md``, ``results.csv`` and ``results.png``.

Runs are the folders ``<setting>_seed<k>`` of the sweep folder that hold ``config.json`` and
``metrics.jsonl``; a run counts once it has logged its config's last epoch. For each setting
the table gives the test mAP over all classes and over the head, medium and tail classes at
the best epoch (the highest test mAP: selected on test data, as in the paper's protocol) and
at the last epoch, as the mean and sample standard deviation (n - 1) over seeds. A setting
that trained as some of the authors' logged runs did (``tailclip.tools.authors_record``: the same
settings and the same loss) also gets their number of runs and their best-epoch and last-epoch
mAP (a value, or the range over their runs), and a line naming how it computed otherwise
than their code (bf16, TF32, class prompts once an epoch). Files keep mAP as fractions in
[0, 1]; the Markdown table and the plot show percent.
"""
import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np

from tailclip.config import LEARNT, SCHEDULE, options_with_role
from tailclip.engine.files import write_figure, write_text
from tailclip.engine.logger import CONFIG_FILE, METRICS_FILE
from tailclip.engine.run_folder import restore_run_files
from tailclip.errors import TailCLIPError
from tailclip.metrics import MAP_LABELS, MAP_NAMES
from tailclip.tools.authors_record import (
    RECORD_DATASETS,
    AuthorsRun,
    format_value,
    load_record,
    matching_runs,
    numerics_notes,
)
from tailclip.tools.comparison import EPOCHS, authors_summary, best_and_last, read_run
from tailclip.wording import percent

# The paper's test mAP (%) for its published configs, as README's Results table lists them.
PUBLISHED_MAP = {"voc_mlt_vitb16": "92.5", "voc_mlt_rn50": "86.1",
                 "coco_mlt_vitb16": "74.3", "coco_mlt_rn50": "58.2-58.5"}
AUTHORS_COLUMNS = ("authors_runs", *(f"authors_{when}_mAP_{end}" for when in EPOCHS for end in ("min", "max")))
SWEEP_FILE = "sweep.json"
RUN_FOLDER = re.compile(r"(?P<setting>.+)_seed(?P<seed>\d+)")
# Options whose values act by their ratios (a learning rate): plotted on a log axis.
LOG_SCALE_OPTIONS = ("lr",)


def finished_run(run_dir: Path) -> dict | None:
    """A run's config and its best- and last-epoch test metrics, or None while the run has
    not logged its last epoch."""
    config, records = read_run(run_dir, evaluated=False)
    if not records or records[-1]["epoch"] < config["epochs"]:
        return None
    chosen = best_and_last(records)
    return {"config": config, **{f"{when}_{group}": _number(chosen[when].get(f"val/{group}"))
                                 for when in EPOCHS for group in MAP_NAMES}}


def _number(value) -> float:
    return math.nan if value is None else float(value)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (std nan for fewer than 2)."""
    finite = np.array([v for v in values if math.isfinite(v)])
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else math.nan


def authors_figures(config: dict, record: list[AuthorsRun]) -> dict:
    """The authors' runs of ``config``'s settings: how many, and the minimum and maximum of
    their best-epoch and last-epoch test mAP (None without a match)."""
    matched = matching_runs(config, record) if config.get("dataset") in RECORD_DATASETS else []
    summaries = [authors_summary(run) for run in matched]
    figures = {"authors_runs": len(matched), "numerics": numerics_notes(config) if matched else []}
    for when in EPOCHS:
        values = [summary[f"{when}_mAP"] for summary in summaries]
        figures[f"authors_{when}_mAP_min"] = min(values) if values else None
        figures[f"authors_{when}_mAP_max"] = max(values) if values else None
    return figures


def read_sweep_file(sweep_dir: Path) -> dict:
    """A sweep folder's ``sweep.json`` (empty for a plain folder of runs)."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        return {}
    try:
        sweep = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        sweep = None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("config"), str) \
            or not all(isinstance(sweep.get(key), list) for key in ("swept", "settings")):
        raise TailCLIPError(f"{path} is damaged (not the JSON a sweep writes); delete it and run the sweep "
                            "command again: it is written anew, and the runs are kept")
    return sweep


def collect(sweep_dir: Path) -> tuple[list[dict], list[str], list[str], dict]:
    """One row per setting (its swept values, seeds and statistics), the swept keys, the
    runs not finished yet, and ``sweep.json`` (empty for a plain folder of runs). Each run's
    files are first restored from its checkpoint where they are behind it or damaged."""
    sweep = read_sweep_file(sweep_dir)
    runs, unfinished = {}, []
    for run_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        match = RUN_FOLDER.fullmatch(run_dir.name)
        if match:
            restore_run_files(run_dir)
        if not match or not (run_dir / CONFIG_FILE).is_file() or not (run_dir / METRICS_FILE).is_file():
            continue
        run = finished_run(run_dir)
        if run is None:
            unfinished.append(run_dir.name)
        else:
            runs.setdefault(match["setting"], []).append({**run, "seed": int(match["seed"])})
    swept = sweep.get("swept") or _differing_keys([run["config"] for group in runs.values() for run in group])
    order = {name: index for index, name in enumerate(sweep.get("settings", []))}
    rows, record = [], load_record()
    for setting in sorted(runs, key=lambda name: (order.get(name, len(order)), name)):
        group = sorted(runs[setting], key=lambda run: run["seed"])
        row = {"setting": setting, **{key: group[0]["config"].get(key) for key in swept},
               "seeds": len(group)}
        for when in EPOCHS:
            for metric in MAP_NAMES:
                row[f"{when}_{metric}_mean"], row[f"{when}_{metric}_std"] = mean_std(
                    [run[f"{when}_{metric}"] for run in group])
        rows.append({**row, **authors_figures(group[0]["config"], record)})
    return rows, swept, unfinished, sweep


def _differing_keys(configs: list[dict]) -> list[str]:
    """The options a sweep's settings can differ in (what runs learn; a seed is no setting) that
    differ between ``configs``: the swept keys of a sweep.json that does not list them."""
    keys = [key for key in options_with_role(LEARNT, SCHEDULE) if key != "seed"]
    return [key for key in keys if len({json.dumps(c.get(key)) for c in configs}) > 1]


def _percent(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return percent(mean) + (f" ± {percent(std)}" if math.isfinite(std) else "")


def _authors_cell(row: dict, when: str) -> str:
    low, high = row[f"authors_{when}_mAP_min"], row[f"authors_{when}_mAP_max"]
    if low is None:
        return "-"
    return percent(low) if percent(low) == percent(high) else f"{percent(low)}-{percent(high)}"


def has_authors(rows: list[dict]) -> bool:
    return any(row["authors_runs"] for row in rows)


def _cell(value) -> str:
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


def _shown(value) -> str:
    """A value in the markdown table: a float (a searched one) to four significant digits."""
    return str(float(f"{value:.4g}")) if isinstance(value, float) else _cell(value)


def markdown_table(rows: list[dict], swept: list[str], published: str | None) -> str:
    header = ["setting", *swept, "seeds",
              *(f"{MAP_LABELS[m]} ({when})" for when in EPOCHS for m in MAP_NAMES)]
    if published:
        header.append("paper mAP")
    authors = has_authors(rows)
    if authors:
        header += ["authors' runs", "authors' mAP (best)", "authors' mAP (last)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["setting"], *(_shown(row[key]) for key in swept), str(row["seeds"]),
                 *(_percent(row[f"{when}_{m}_mean"], row[f"{when}_{m}_std"]) for when in EPOCHS for m in MAP_NAMES)]
        cells += [published] if published else []
        cells += [str(row["authors_runs"]), *(_authors_cell(row, when) for when in EPOCHS)] if authors else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict], swept: list[str], published: str | None) -> None:
    fields = ["setting", *swept, "seeds", *(f"{when}_{m}_{stat}" for when in EPOCHS for m in MAP_NAMES
                                           for stat in ("mean", "std"))]
    authors = list(AUTHORS_COLUMNS) if has_authors(rows) else []
    # The paper's percent as a fraction, like the other columns ("0.582-0.585" for a range).
    paper = {"paper_mAP": "-".join(f"{float(p) / 100:.3f}" for p in published.split("-"))} if published else {}
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fields + list(paper) + authors, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**{key: (_cell(value) if key in swept else value) for key, value in row.items()},
                         **paper})
    write_text(path, table.getvalue())


def write_report(sweep_dir) -> list[Path]:
    """Write ``results.md``, ``results.csv`` and ``results.png`` into ``sweep_dir``; the paths."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise TailCLIPError(f"no sweep folder {sweep_dir}")
    rows, swept, unfinished, sweep = collect(sweep_dir)
    published = PUBLISHED_MAP.get(Path(sweep.get("config", "")).stem)
    paths = [sweep_dir / "results.md", sweep_dir / "results.csv"]
    text = [f"# {sweep_dir.name}", ""]
    if sweep.get("config"):
        text += [f"Config: `{sweep['config']}`.", ""]
    text += ["Test mAP (%) over all classes and the head, medium and tail classes; mean ± sample "
             "standard deviation over the seeds. *best*: the epoch of the highest test mAP "
             "(selected on test data, as in the paper's protocol); *last*: the final epoch.", ""]
    if published:
        text += ["*paper mAP*: the published result of this config (the paper's settings).", ""]
    if rows and has_authors(rows):
        text += ["*authors'*: the paper's authors' logged runs with the same settings "
                 "(`datasets/authors_runs/`): how many, and their test mAP at the best and the last "
                 "epoch (the range over their runs; a run stopped early gives its last logged epoch).", ""]
        for notes in dict.fromkeys(tuple(row["numerics"]) for row in rows if row["numerics"]):
            settings = ", ".join(row["setting"] for row in rows if tuple(row["numerics"]) == notes)
            text += [f"Computed otherwise than the authors' code ({settings}): {'; '.join(notes)}.", ""]
    text.append(markdown_table(rows, swept, published) if rows else "No finished runs yet.")
    if unfinished:
        text += ["", f"Not finished (left out): {', '.join(unfinished)}."]
    if rows:
        paths.append(sweep_dir / "results.png")
        plot(rows, swept, paths[-1])
        text += ["", "![head, medium and tail mAP at the last epoch](results.png)"]
    write_text(paths[0], "\n".join(text) + "\n")
    write_csv(paths[1], rows, swept, published)
    return paths


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot(rows: list[dict], swept: list[str], path: Path) -> None:
    """``figure``, saved to ``path``."""
    import matplotlib.pyplot as plt

    shown = figure(rows, swept)
    write_figure(path, shown, dpi=120)
    plt.close(shown)


def figure(rows: list[dict], swept: list[str]):
    """Head, medium and tail mAP (last epoch, error bars: std over seeds) against each swept
    numeric value (a line per combination of the other swept values), or, when no swept value
    is a number, a grouped bar chart of the settings; a matplotlib figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = [k for k in swept if all(_is_number(row[k]) for row in rows) and len({row[k] for row in rows}) > 1]
    if numeric:
        shown, axes = plt.subplots(1, len(numeric), figsize=(5 * len(numeric), 4), squeeze=False)
        for axis, key in zip(axes[0], numeric):
            _plot_against(axis, rows, key, [k for k in swept if k != key])
    else:
        shown, axis = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 2), 4.5))
        _plot_bars(axis, rows)
    shown.tight_layout()
    return shown


def _errors(rows: list[dict], metric: str) -> tuple[list[float], list[float]]:
    means = [100 * row[f"last_{metric}_mean"] for row in rows]
    stds = [100 * row[f"last_{metric}_std"] if math.isfinite(row[f"last_{metric}_std"]) else 0 for row in rows]
    return means, stds


def _plot_against(axis, rows: list[dict], key: str, others: list[str]) -> None:
    """One line per group and each combination of the other swept values."""
    combinations = {}
    for row in rows:
        combinations.setdefault(tuple(_cell(row[k]) for k in others), []).append(row)
    styles = ["-", "--", ":", "-."]
    for index, (values, series) in enumerate(combinations.items()):
        series = sorted(series, key=lambda row: row[key])
        suffix = f" ({', '.join(f'{k}={v}' for k, v in zip(others, values))})" if others else ""
        for metric, colour in zip(MAP_NAMES[1:], ("tab:blue", "tab:orange", "tab:red")):
            means, stds = _errors(series, metric)
            axis.errorbar([row[key] for row in series], means, yerr=stds, marker="o", capsize=3,
                          color=colour, linestyle=styles[index % len(styles)],
                          label=MAP_LABELS[metric] + suffix)
    positive = [row[key] for row in rows if row[key] > 0]
    if len(positive) == len(rows) and (key in LOG_SCALE_OPTIONS or max(positive) / min(positive) >= 100):
        _log_axis(axis, sorted(set(positive)))
    axis.set_xlabel(key)
    axis.set_ylabel("test mAP (%), last epoch")
    axis.legend(fontsize="small")
    axis.grid(alpha=0.3)


def _log_axis(axis, values: list[float]) -> None:
    """A log x axis labelled at the swept values only, as they are written (``2e-6``), upright
    when there are more than a few (a ratio of 1.2 apart is a few points on the axis)."""
    from matplotlib.ticker import NullLocator

    axis.set_xscale("log")
    axis.xaxis.set_minor_locator(NullLocator())
    axis.set_xticks(values, [format_value(value) for value in values], fontsize="small",
                    rotation=90 if len(values) > 4 else 0)


def _plot_bars(axis, rows: list[dict]) -> None:
    positions = np.arange(len(rows))
    width = 0.27
    for offset, (metric, colour) in enumerate(zip(MAP_NAMES[1:], ("tab:blue", "tab:orange", "tab:red"))):
        means, stds = _errors(rows, metric)
        axis.bar(positions + (offset - 1) * width, means, width, yerr=stds, capsize=3, color=colour,
                 label=MAP_LABELS[metric])
    axis.set_xticks(positions, [row["setting"] for row in rows], rotation=30, ha="right", fontsize="small")
    axis.set_ylabel("test mAP (%), last epoch")
    axis.legend(fontsize="small")
    axis.grid(alpha=0.3, axis="y")
