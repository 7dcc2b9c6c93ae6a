"""One JSON report of ``bench/run_gpu_bench.sh``: every stage's outcome (the end of its log
when it failed), the GPU suite's checks with their figures, every benchmark's figures, the
demo runs' mAP, and a summary.

    python bench/gpu_report.py RESULTS_DIR TOTAL_SECONDS BUDGET_SECONDS   # writes RESULTS_DIR/report.json
"""
import json
import re
import sys
from pathlib import Path

FINAL_LINE = re.compile(r"val mAP: start (?P<start>\S+) \(before training\) -> end (?P<end>\S+) "
                        r"\(after epoch \d+\); best (?P<best>\S+) \(epoch (?P<best_epoch>\d+)\)")
EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+ .*?(\d+\.\d) s, (\d+) img/s")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return {"unreadable": f"{path.name}: {error}"} if path.exists() else None


def demo_run(log: Path) -> dict | None:
    """The demo run's val mAP (start, end, best, in %) and seconds and images/s per epoch."""
    if not log.exists():
        return None
    text = log.read_text(errors="replace")
    final = FINAL_LINE.search(text)
    epochs = [{"epoch": int(e), "seconds": float(s), "train_images_per_s": int(r)}
              for e, s, r in (m.groups() for m in map(EPOCH_LINE.match, text.splitlines()) if m)]
    return {"val_mAP": final.groupdict() if final else None, "epochs": epochs}


def summary(benchmarks: dict, demos: dict, suite: dict | None) -> dict:
    def figure(name, *keys):
        value = benchmarks.get(name) or {}
        for key in ("results", *keys):
            value = value.get(key) if isinstance(value, dict) else None
        return value

    fast, faithful = (figure(name, "train", "ours", "images_per_s") for name in ("vitb16_b64_fast", "vitb16_b64_fp32"))
    mAP = {name: (run or {}).get("val_mAP") for name, run in demos.items()}
    return {
        "gpu_suite": suite and suite.get("counts"),
        "vitb16_b64_fast_train_images_per_s": fast,
        "vitb16_b64_fast_train_vs_paper": figure("vitb16_b64_fast", "ratios", "train"),
        "vitb16_b64_fast_mfu": figure("vitb16_b64_fast", "train", "ours", "mfu"),
        "vitb16_b64_fast_eval_seconds_test_split": figure("vitb16_b64_fast", "eval", "ours", "seconds"),
        "vitb16_b64_fp32_train_images_per_s": faithful,
        "fast_over_fp32_training_speed": fast / faithful if fast and faithful else None,
        "demo_val_mAP_fast_vs_fp32": mAP,
        "vitb16_b64_compiled_train_images_per_s": figure("vitb16_b64_compiled", "train", "ours", "images_per_s"),
    }


def main(results: Path, total_seconds: float, budget: float) -> dict:
    stages = [json.loads(line) for line in (results / "stages.jsonl").read_text().splitlines() if line.strip()]
    for stage in stages:  # what went wrong, without unpacking logs.tar.gz
        log = results / f"{stage['stage']}.log"
        if stage["outcome"].startswith("failed") and log.exists():
            stage["log_tail"] = log.read_text(errors="replace")[-4000:]
    names = [stage["stage"] for stage in stages]
    suite = read_json(results / "gpu_suite.json")
    benchmarks = {name: read_json(results / f"{name}.json") for name in names
                  if (results / f"{name}.json").exists() and name != "gpu_suite"}
    demos = {name: demo_run(results / f"{name}.log") for name in names if name.startswith("demo_")}
    environment = (results / "gpu.txt").read_text().splitlines() if (results / "gpu.txt").exists() else []
    report = {"environment": environment, "total_seconds": total_seconds, "budget_seconds": budget,
              "stages": stages, "summary": summary(benchmarks, demos, suite), "gpu_suite": suite,
              "benchmarks": benchmarks, "demo": demos}
    (results / "report.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    result = main(Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]))
    for stage in result["stages"]:
        print(f"{stage['stage']:<22} {stage['outcome']} ({stage['seconds']} s)")
    print(json.dumps(result["summary"], indent=2))
    print(f"report: {Path(sys.argv[1]) / 'report.json'} "
          f"({result['total_seconds']:.0f} s of {result['budget_seconds']:.0f})")
