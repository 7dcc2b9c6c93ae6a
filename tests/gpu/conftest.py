"""The GPU conformance suite: each CUDA-only path of TailCLIP against its reference.

Every test here is marked ``gpu``; without a CUDA device each is reported as skipped with the
reason "no CUDA device" (never as passed), before any fixture runs. With
``TAILCLIP_GPU_REPORT=FILE`` the outcome of every test, with the figures it records
(``record_property``: differences, tolerances, memory, recompilations), is written to FILE as
JSON, rewritten after every test (a run stopped at a time limit leaves what it did);
``bench/run_gpu_bench.sh`` puts it into its report. The tests that compile with inductor run
last: they take most of the suite's time.
"""
import collections
import json
import os
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
_suite: set[str] = set()  # the node ids of this suite's tests
_outcomes: dict[str, dict] = {}


def pytest_collection_modifyitems(config, items):
    no_cuda = None if torch.cuda.is_available() else pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if item.path.resolve().parent == HERE:
            _suite.add(item.nodeid)
            item.add_marker(pytest.mark.gpu)
            if no_cuda:
                item.add_marker(no_cuda)
    items.sort(key=lambda item: item.path.name == "test_gpu_compile.py")


def pytest_runtest_logreport(report):
    if report.nodeid not in _suite:
        return
    # A test stopped by a time limit keeps the outcome "started".
    entry = _outcomes.setdefault(report.nodeid, {"outcome": "started", "seconds": 0.0, "figures": {}})
    entry["seconds"] += report.duration
    entry["figures"].update(dict(report.user_properties))
    if report.skipped:
        entry["outcome"] = "skipped"
        entry["reason"] = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    elif report.failed:
        entry["outcome"] = "failed" if report.when == "call" else "error"
        entry["message"] = report.longreprtext[-3000:]
    elif report.when == "call":
        entry["outcome"] = "passed"
    _write_report()


def _write_report() -> None:
    path = os.environ.get("TAILCLIP_GPU_REPORT")
    if path:
        counts = collections.Counter(entry["outcome"] for entry in _outcomes.values())
        Path(path).write_text(json.dumps({"written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                          "torch": torch.__version__, "counts": counts,
                                          "tests": _outcomes}, indent=2))


@pytest.fixture
def exact_fp32():
    """Float32 without TF32 in matmuls and cuDNN convolutions (cuDNN's own default allows
    it), so that a reference is float32; the flags are put back afterwards. Set through the
    older flags, which write the per-operator ones too: both then agree, as torch code that
    still reads the older ones (inductor's) needs."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32, matmul.fp32_precision, cudnn.conv.fp32_precision
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    yield
    matmul.allow_tf32, cudnn.allow_tf32 = saved[:2]
    matmul.fp32_precision, cudnn.conv.fp32_precision = saved[2:]
