"""Each option is declared once, with its metadata (tailclip/config.py): what the resume
accepts, what a sweep may vary, what the authors' record compares, how a config is checked
and the docs' table all follow from it."""
import ast
import re
from pathlib import Path

import pytest

from tailclip import config
from tailclip.config import LEARNT, OPTIONS, RUNNING, SCHEDULE, Config, ConfigError, load_config
from tailclip.engine.training_state import RESUMABLE_OPTIONS, resumed_config
from tailclip.tools import authors_record
from tailclip.tools.sweep import SweepError, parse_grid

REPO = Path(__file__).resolve().parents[1]
DOCS_TABLE = re.compile(r"<!-- options: python -m tailclip.config --markdown -->\n(.*?)<!-- end of options -->",
                        re.DOTALL)


def test_a_config_file_is_checked_once(monkeypatch):
    checks = []
    original = config._check
    monkeypatch.setattr(config, "_check", lambda values: checks.append(1) or original(values))
    load_config(REPO / "configs" / "demo.py", ["epochs=2"])
    assert len(checks) == 1


def test_a_bad_override_is_named_where_it_came_from():
    with pytest.raises(ConfigError, match=r"^--set n_ctx=0: n_ctx: must be >= 1, got 0$"):
        load_config(REPO / "configs" / "demo.py", ["n_ctx=0"])


def test_a_resumed_run_may_change_what_says_how_it_runs_and_nothing_it_learns(tmp_path):
    saved = Config(epochs=4)
    checkpoint, path = {"config": saved.to_dict()}, tmp_path / "run" / "newest_train_checkpoint.pt"
    assert set(RESUMABLE_OPTIONS) == {name for name, about in OPTIONS.items() if about.role != LEARNT}
    # data_root says where the data is now: a run whose data moved resumes from there.
    moved = resumed_config(checkpoint, Config(epochs=4, data_root="elsewhere"), ["data_root"], path)
    assert moved.data_root == "elsewhere"
    for key, value in [("momentum", 0.5), ("seed", 1), ("skip_unreadable_images", True)]:
        with pytest.raises(ConfigError, match=f"{key} cannot change during a run"):
            resumed_config(checkpoint, Config(epochs=4, **{key: value}), [key], path)


def test_a_sweep_varies_what_runs_learn(tmp_path):
    assert parse_grid("momentum=0.5,0.9")[0] == "momentum"
    for grid in ["num_workers=0,2", "device=cpu,auto", "run_dir=a,b"]:
        with pytest.raises(SweepError, match="cannot be swept: it says how a run runs"):
            parse_grid(grid)
    with pytest.raises(SweepError, match="seed cannot be swept: use --seeds"):
        parse_grid("seed=0,1")


def test_the_authors_record_compares_options_that_change_what_is_learnt():
    compared = {*authors_record.MATCHED_OPTIONS, *authors_record.AUTHORS_FIXED}
    assert {OPTIONS[name].role for name in compared} <= {LEARNT, SCHEDULE}
    # Each value the authors' code fixes is one our config accepts, the default among them.
    for name, values in authors_record.AUTHORS_FIXED.items():
        assert getattr(Config(), name) in values
        for value in values:
            assert getattr(Config(**{name: value}), name) == value


def rendered_rows(markdown: str) -> dict[str, list[str]]:
    rows = [line.split(" | ") for line in markdown.splitlines()[2:]]
    return {row[0].strip("| `"): [cell.strip(" |") for cell in row[1:]] for row in rows}


def test_the_option_table_gives_every_option_with_its_default_and_role():
    rows = rendered_rows(config.options_markdown())
    assert list(rows) == list(Config().to_dict())
    assert {name: ast.literal_eval(cells[0].strip("`")) for name, cells in rows.items()} == Config().to_dict()
    assert rows["device"][2] == rows["seed"][2].replace("what is learnt", "how the run runs")
    assert rows["batch_size"][1] == "an integer >= 1" and rows["lr"][1] == "a number > 0"
    assert rows["score"][1] == '`"softmax"`, `"sigmoid"`, `"logits"`'
    assert rows["epochs"][2] == "what is learnt (may change on resume)"


def test_the_docs_option_table_is_the_rendered_one():
    pages = {path: DOCS_TABLE.search(path.read_text()) for path in sorted((REPO / "docs").glob("*.md"))}
    found = {path: match for path, match in pages.items() if match}
    assert [path.name for path in found] == ["options.md"]
    for path, match in found.items():
        assert match.group(1) == config.options_markdown(), f"{path}: run python -m tailclip.config --markdown"


@pytest.mark.parametrize("name", [name for name, about in OPTIONS.items() if about.range])
def test_each_range_is_enforced_as_declared(name):
    bounds = OPTIONS[name].range
    outside = bounds.low if bounds.low_open else bounds.low - 1
    inside = bounds.low + (0.5 if bounds.low_open else 0)
    assert config.option_problem(name, outside).startswith(f"must be {bounds}, got")
    assert config.option_problem(name, inside) is None


def test_roles_are_known():
    assert {about.role for about in OPTIONS.values()} == {LEARNT, SCHEDULE, RUNNING}
