"""The README's commands as a new user meets them, and text that reads on its own."""
import re
import subprocess
import sys
from pathlib import Path

from tailclip.config import load_config

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start:README.find("\n## ", start + 1)]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_tensorboard_command_runs_in_the_environment_of_the_set_up():
    # The set-up makes a virtual environment and does not activate it: the command names
    # the environment's own tensorboard, which the requirements install beside python.
    [command] = code_blocks(section("Reading TensorBoard"), "bash")
    program, *args = command.split()
    assert program == ".venv/bin/tensorboard" and args == ["--logdir", "runs"]
    installed = Path(sys.executable).parent / "tensorboard"
    result = subprocess.run([str(installed), "--help"], capture_output=True, text=True, timeout=120, check=True)
    assert "--logdir" in result.stdout


def test_custom_dataset_example_runs_like_the_demo(tmp_path):
    # The demo's execution settings are what make it fast on a CPU (one thread, no workers).
    config_text = code_blocks(section("Train on your own data"), "python")[0]
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
