"""Lock files the project did not write as it writes them (any bytes, any values, a folder) fall
under the documented rules: unreadable, refused while it may still be being written, stale
and removed once nobody has written it for a while; a folder is left to the user. A lock
whose process id now belongs to a process started after the lock (the id was reused) is stale,
not a training to stop."""
import datetime
import json
import os
import socket
import subprocess
import time

import pytest

from tailclip.engine.run_lock import LOCK_FILE, RunFolderError, RunLock

ODD_LOCKS = {
    "not UTF-8": b"\xff\xfe\x00garbage\x80",
    "pid not a number": json.dumps({"host": socket.gethostname(), "pid": "12ab", "started": "2026-01-01"}).encode(),
    "pid too large": json.dumps({"host": socket.gethostname(), "pid": 2 ** 80, "started": "2026-01-01"}).encode(),
    "pid negative": json.dumps({"host": socket.gethostname(), "pid": -1, "started": "2026-01-01"}).encode(),
    "host not a string": json.dumps({"host": 7, "pid": 1, "started": "2026-01-01"}).encode(),
    "start not a time": json.dumps({"host": socket.gethostname(), "pid": 1, "started": "yesterday"}).encode(),
    "a list": b"[1, 2]",
}


@pytest.mark.parametrize("content", ODD_LOCKS.values(), ids=ODD_LOCKS.keys())
def test_an_odd_lock_is_unreadable_then_stale(tmp_path, capsys, content):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock_path = run_dir / LOCK_FILE
    lock_path.write_bytes(content)
    with pytest.raises(RunFolderError, match=f"lock file {lock_path} cannot be read"):  # may be being written
        RunLock.take(run_dir)
    assert lock_path.read_bytes() == content
    long_ago = time.time() - 60
    os.utime(lock_path, (long_ago, long_ago))
    RunLock.take(run_dir).release()
    assert f"removed the stale lock {lock_path}: empty or unreadable" in capsys.readouterr().out
    assert not lock_path.exists()


def test_a_folder_named_like_the_lock_is_left_to_the_user(tmp_path):
    lock_path = tmp_path / "run" / LOCK_FILE
    lock_path.mkdir(parents=True)
    with pytest.raises(RunFolderError, match=f"{lock_path} is a folder, not a lock this project writes. If no "
                                             "training runs in that folder, delete it"):
        RunLock.take(tmp_path / "run")
    assert lock_path.is_dir()


def test_a_reused_process_id_is_no_training_to_stop(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock_path = run_dir / LOCK_FILE
    an_hour_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    other = subprocess.Popen(["sleep", "60"])  # alive, started after the lock: not its writer
    try:
        lock_path.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                         "started": an_hour_ago.isoformat(timespec="seconds")}))
        lock = RunLock.take(run_dir)
        assert json.loads(lock_path.read_text())["pid"] == os.getpid()
        lock.release()
    finally:
        other.kill()
        other.wait()
    out = capsys.readouterr().out
    assert (f"removed the stale lock {lock_path} of process {other.pid} on host {socket.gethostname()} "
            f"(started {an_hour_ago.isoformat(timespec='seconds')}), whose process id now belongs to a "
            "process started after the lock") in out
