"""What the command lines import before they check their inputs, and what a run never imports.

A fresh interpreter (a subprocess: sys.modules of this one holds whatever other tests
imported) imports the four command lines and the modules they run, then evaluates the tiny
model with ``test.py --zeroshot``. torchvision, which imports its detection models and
torch._dynamo, is needed by neither; scikit-learn, scipy, matplotlib and TensorBoard are
imported only where a metric is computed or a figure drawn, after the inputs are checked.
"""
import json
import subprocess
import sys

from tiny_dataset import write_config, write_dataset

PROBE = """
import json, sys
HEAVY = ("torchvision", "torch._dynamo", "sklearn", "scipy", "matplotlib", "tensorboard")
def heavy():
    return sorted({prefix for prefix in HEAVY for name in sys.modules
                   if name == prefix or name.startswith(prefix + ".")})
import predict, sweep, test, train
import tailclip.engine.training, tailclip.tools.predict, tailclip.tools.report, tailclip.tools.sweep
at_start = heavy()
code = test.main(["--config", sys.argv[1], "--zeroshot"])
print(json.dumps({"at_start": at_start, "after_evaluation": heavy(), "code": code}))
"""


def test_command_lines_start_without_heavy_imports_and_evaluate_without_torchvision(tmp_path, repo_root):
    config = write_config(tmp_path / "tiny.py", write_dataset(tmp_path / "data"), tmp_path / "runs")
    done = subprocess.run([sys.executable, "-c", PROBE, str(config)], cwd=repo_root, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported["code"] == 0
    assert imported["at_start"] == []
    # What the evaluation needed; torchvision and torch._dynamo it did not.
    assert imported["after_evaluation"] == ["matplotlib", "scipy", "sklearn"]
