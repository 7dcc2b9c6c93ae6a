"""How long a command line takes to report a mistake in its config, against importing torch.

Each repetition runs, in fresh interpreters and in turn, ``python -c "import torch"`` and
train.py, test.py and sweep.py with ``--set lr=-1`` on configs/demo.py, which each must refuse
with the one line ``error: --set lr=-1: lr: must be > 0, got -1.0`` (exit 1). It prints the
median and the fastest wall time of each, and the ratio of each median to torch's (the goal:
about 2 at most). The machine's load average is printed before and after: on shared cores
the times vary from run to run, their ratios less.

    python bench/bench_startup.py [--repeats 7]
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MISTAKE = ["--config=configs/demo.py", "--set", "lr=-1"]
COMMANDS = {
    'python -c "import torch"': ["-c", "import torch"],
    "train.py (config mistake)": ["train.py", *MISTAKE],
    "test.py (config mistake)": ["test.py", *MISTAKE],
    "sweep.py (config mistake)": ["sweep.py", "--name=startup_bench", *MISTAKE],
}


def timed(arguments: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *arguments], cwd=REPO_ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    is_torch = arguments[0] == "-c"
    if done.returncode != (0 if is_torch else 1) or (not is_torch and "lr: must be > 0" not in done.stderr):
        sys.exit(f"{' '.join(arguments)} did not answer as expected (exit {done.returncode}):\n{done.stderr}")
    return elapsed


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command (default 7)")
    args = parser.parse_args()
    print(f"load average (1, 5, 15 min) before: {load_average()}")
    times = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):  # interleaved, so that a change of load affects all alike
        for name, arguments in COMMANDS.items():
            times[name].append(timed(arguments))
    print(f"load average (1, 5, 15 min) after: {load_average()}")
    torch_median = statistics.median(times['python -c "import torch"'])
    print(f"{'command':<28}{'median s':>10}{'fastest s':>11}{'median / torch':>16}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:<28}{median:>10.2f}{min(seconds):>11.2f}{median / torch_median:>16.2f}")


if __name__ == "__main__":
    main()
