"""The README's and docs/' commands as a new user meets them, links that lead somewhere, the tests
the docs cite, and text that reads on its own."""
import re
import subprocess
import sys
from pathlib import Path

from tailclip.config import load_config

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def section(page: str, title: str) -> str:
    text = (REPO / page).read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_tensorboard_command_runs_in_the_environment_of_the_set_up():
    # The set-up makes a virtual environment and does not activate it: the command names
    # the environment's own tensorboard, which the requirements install beside python.
    [command] = code_blocks(section("docs/outputs.md", "Reading TensorBoard"), "bash")
    program, *args = command.split()
    assert program == ".venv/bin/tensorboard" and args == ["--logdir", "runs"]
    installed = Path(sys.executable).parent / "tensorboard"
    result = subprocess.run([str(installed), "--help"], capture_output=True, text=True, timeout=120, check=True)
    assert "--logdir" in result.stdout


def test_custom_dataset_example_runs_like_the_demo(tmp_path):
    # The demo's execution settings are what make it fast on a CPU (one thread, no workers).
    config_text = code_blocks((DOCS / "custom_data.md").read_text(), "python")[0]
    (tmp_path / "my_data.py").write_text(config_text)
    example, demo = load_config(tmp_path / "my_data.py"), load_config(REPO / "configs" / "demo.py")
    for option in ("model_name", "size", "device", "num_threads", "precision", "num_workers",
                   "batch_size", "eval_batch_size", "image_cache"):
        assert getattr(example, option) == getattr(demo, option), option


def test_no_tracker_issue_numbers():
    pattern = re.compile(r"\bissues?\s+#?\d+\b|\(#\d+\)|\bissue-\d+", re.IGNORECASE)
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    found = [f"{name}:{number}: {line.strip()}"
             for name in files if name.endswith((".py", ".md", ".sh", ".txt", ".ini", ".cfg", ".toml"))
             or name == ".ci/run"
             for number, line in enumerate((REPO / name).read_text().splitlines(), start=1)
             if pattern.search(line)]
    assert not found, "\n".join(found)


def markdown_files() -> list[Path]:
    return [REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "RESULTS.md", *sorted(DOCS.glob("*.md"))]


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_leads_to_a_file_and_heading_that_exist():
    broken = []
    for page in markdown_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif fragment:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
                if fragment not in {anchor(heading) for heading in headings}:
                    broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert broken == []


def test_anchor_follows_githubs_rule():
    assert anchor("Stop requests: Ctrl-C and SIGTERM") == "stop-requests-ctrl-c-and-sigterm"
    assert anchor("What the authors' `\"asl\"` trained") == "what-the-authors-asl-trained"
    assert anchor("metrics.jsonl and the per-step curves") == "metricsjsonl-and-the-per-step-curves"


def test_every_test_the_docs_cite_exists():
    cited = sorted({(path, name) for page in markdown_files()
                    for path, name in re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", page.read_text())})
    assert len(cited) > 50  # docs/guarantees.md names the tests of every guarantee
    missing = [f"{path}::{name}" for path, name in cited
               if not re.search(rf"^def {name}\(", (REPO / path).read_text(), flags=re.M)]
    assert missing == []


def test_readme_is_short_and_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    unlinked = [page.name for page in DOCS.glob("*.md") if f"](docs/{page.name})" not in readme]
    assert unlinked == []
