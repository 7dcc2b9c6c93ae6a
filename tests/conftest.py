"""Shared test fixtures.

The real benchmark split files and the CLIP vocabulary live in ``../shared/data`` beside the
checkout. Tests that need them skip when the folder is absent on a developer machine, but
fail when ``CI`` is set: a CI run that silently skipped them would prove nothing.

The suite runs in two worker processes (pytest-xdist, ``-n 2`` in pyproject.toml), each
test file in one of them. What several files share is made once per session for both: the
synthetic dataset (its generation takes a lock), the demo run below.
"""
import contextlib
import io
import os
import runpy
import shutil
import subprocess
import threading
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from local_http import RangeRequestHandler

# The sweep tests' fixtures (a sweep.py entry point, a tiny config, the trainings a sweep starts).
pytest_plugins = ["sweep_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BPE_FILE = SHARED_DATA / "clip" / "bpe_simple_vocab_16e6.txt.gz"

# One torch thread per process: the workers (and the programs tests start) share two
# cores, where a second thread each oversubscribes them. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Point the tokenizer at the shared vocabulary so that no test ever needs the network.
if BPE_FILE.exists() and "TAILCLIP_BPE_PATH" not in os.environ:
    os.environ["TAILCLIP_BPE_PATH"] = str(BPE_FILE)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; missing is a failure under CI, a skip elsewhere."""
    if not SHARED_DATA.is_dir():
        message = f"shared reference data not found at {SHARED_DATA}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def train_main():
    """``train.py``'s ``main(argv) -> exit code``, run in this process."""
    return runpy.run_path(str(REPO_ROOT / "train.py"))["main"]


@pytest.fixture(scope="session")
def run_script():
    """``run_script(name, *args)``: the command line ``name`` (train.py, test.py, ...) run by
    its ``main(args)`` in this process; its exit code and what it printed as
    ``subprocess.run`` returns a process's (for a process-level guarantee, run the process)."""
    def run(name: str, *args) -> subprocess.CompletedProcess:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = runpy.run_path(str(REPO_ROOT / name))["main"](list(map(str, args)))
        return subprocess.CompletedProcess([name, *args], code, out.getvalue(), err.getvalue())
    return run


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, run_script) -> tuple[Path, str]:
    """``(runs folder, printed output)`` of train.py on the demo config for 2 epochs (a larger
    batch: fewer, cheaper steps), in ``<runs>/demo``. Trained once per session: the first
    worker that needs it trains it, the other waits and reads it. Read it only; a test that
    writes into a finished run (resumes it, tests it, damages it) takes ``demo_run_copy``."""
    from tailclip.data.synthetic import locked  # here: torch loads after OMP_NUM_THREADS is set

    shared = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:  # the workers' folders share their parent
        shared = shared.parent
    runs, output = shared / "demo_runs", shared / "demo_output.txt"
    with locked(shared):  # the synthetic dataset's lock, on this session's folder
        if not output.exists():
            done = run_script("train.py", f"--config={REPO_ROOT / 'configs' / 'demo.py'}", "--set", "epochs=2",
                              "--set", "batch_size=128", "--set", f"run_dir={runs}")
            assert done.returncode == 0, done.stderr[-4000:]
            output.write_text(done.stdout + done.stderr)
    return runs, output.read_text()


@pytest.fixture
def demo_run_copy(demo_run, tmp_path) -> Path:
    """A copy of `demo_run`'s runs folder (the run in ``<copy>/demo``), this test's to change."""
    return shutil.copytree(demo_run[0], tmp_path / "runs")


@pytest.fixture
def http_server(tmp_path):
    """A ThreadingHTTPServer on 127.0.0.1 serving `server.root`; `server.url` is its address."""
    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeRequestHandler, directory=str(root)))
    server.root, server.url = root, f"http://127.0.0.1:{server.server_port}"
    server.requests, server.body_bytes_sent = [], 0
    server.honour_range, server.cut_after = True, None
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()
