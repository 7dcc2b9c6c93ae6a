"""Shared test fixtures.

The real benchmark split files and the CLIP vocabulary live in ``../shared/data`` beside the
checkout. Tests that need them skip when the folder is absent on a developer machine, but
fail when ``CI`` is set: a CI run that silently skipped them would prove nothing.
"""
import os
import runpy
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
