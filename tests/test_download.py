"""clip.download against a local HTTP server and file:// addresses (never the network)."""
import hashlib
import os
import socket
import time

import pytest

from clip.download import DownloadError, download, sha256_of
from process_group import free_port

PAYLOAD = os.urandom(300_000)
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def served(http_server):
    (http_server.root / "weights.bin").write_bytes(PAYLOAD)
    return http_server


def test_download_writes_file_with_progress_bar(served, tmp_path, capsys):
    path = download(f"{served.url}/weights.bin", tmp_path / "cache", sha256=PAYLOAD_SHA256, progress=True)
    assert path == tmp_path / "cache" / "weights.bin"
    assert path.read_bytes() == PAYLOAD
    assert not path.with_name("weights.bin.part").exists()
    progress = capsys.readouterr().err
    assert "weights.bin" in progress and "100%" in progress
    assert sha256_of(path) == PAYLOAD_SHA256


def test_progress_false_prints_nothing(served, tmp_path, capsys):
    download(f"{served.url}/weights.bin", tmp_path, progress=False, filename="renamed.bin")
    assert (tmp_path / "renamed.bin").read_bytes() == PAYLOAD
    assert capsys.readouterr().err == ""


def test_no_progress_bar_by_default_when_stderr_is_not_a_terminal(served, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TAILCLIP_PROGRESS", raising=False)
    download(f"{served.url}/weights.bin", tmp_path)  # capsys's stderr is no terminal
    assert (tmp_path / "weights.bin").read_bytes() == PAYLOAD
    assert capsys.readouterr().err == ""


def test_partial_file_is_resumed_with_a_range_request(served, tmp_path):
    half = len(PAYLOAD) // 2
    (tmp_path / "weights.bin.part").write_bytes(PAYLOAD[:half])
    path = download(f"{served.url}/weights.bin", tmp_path, sha256=PAYLOAD_SHA256, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert served.requests == [("/weights.bin", f"bytes={half}-")]
    assert served.body_bytes_sent == len(PAYLOAD) - half


def test_dropped_connection_keeps_part_file_and_next_run_resumes(served, tmp_path):
    served.cut_after = 100_000
    with pytest.raises(DownloadError, match="100000 of 300000 bytes.*run again"):
        download(f"{served.url}/weights.bin", tmp_path, sha256=PAYLOAD_SHA256, progress=False)
    assert (tmp_path / "weights.bin.part").stat().st_size == 100_000
    assert not (tmp_path / "weights.bin").exists()

    served.cut_after = None
    path = download(f"{served.url}/weights.bin", tmp_path, sha256=PAYLOAD_SHA256, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert served.requests[-1] == ("/weights.bin", "bytes=100000-")


def test_server_ignoring_range_restarts_from_zero(served, tmp_path):
    served.honour_range = False
    (tmp_path / "weights.bin.part").write_bytes(b"x" * 1000)  # wrong bytes: appending would corrupt
    path = download(f"{served.url}/weights.bin", tmp_path, sha256=PAYLOAD_SHA256, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_complete_part_file_is_accepted_on_416(served, tmp_path):
    (tmp_path / "weights.bin.part").write_bytes(PAYLOAD)  # finished, but not yet renamed
    path = download(f"{served.url}/weights.bin", tmp_path, sha256=PAYLOAD_SHA256, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert served.body_bytes_sent == 0


def test_oversized_part_file_is_discarded(served, tmp_path):
    (tmp_path / "weights.bin.part").write_bytes(PAYLOAD + b"junk")
    path = download(f"{served.url}/weights.bin", tmp_path, sha256=PAYLOAD_SHA256, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_wrong_sha256_is_rejected_and_file_removed(served, tmp_path):
    wrong = "0" * 64
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as info:
        download(f"{served.url}/weights.bin", cache, sha256=wrong, progress=False)
    message = str(info.value)
    assert wrong in message and PAYLOAD_SHA256 in message
    assert str(cache / "weights.bin") in message and "by hand" in message
    assert list(cache.iterdir()) == []  # neither the file nor a .part remains


def test_existing_file_with_right_hash_is_not_downloaded_again(served, tmp_path):
    (tmp_path / "weights.bin").write_bytes(PAYLOAD)
    download(f"{served.url}/weights.bin", tmp_path, sha256=PAYLOAD_SHA256.upper(), progress=False)
    download(f"{served.url}/weights.bin", tmp_path, progress=False)  # no hash: kept as it is
    assert served.requests == []


def test_existing_file_with_wrong_hash_is_downloaded_again(served, tmp_path, capsys):
    (tmp_path / "weights.bin").write_bytes(b"stale")
    path = download(f"{served.url}/weights.bin", tmp_path, sha256=PAYLOAD_SHA256, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert len(served.requests) == 1
    assert "downloading it again" in capsys.readouterr().err


def test_file_url(tmp_path):
    source = tmp_path / "source dir" / "vocab.gz"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    path = download(source.as_uri(), tmp_path / "cache", sha256=PAYLOAD_SHA256, progress=False)
    assert path == tmp_path / "cache" / "vocab.gz"
    assert path.read_bytes() == PAYLOAD


def test_http_error_names_status_and_what_to_do(http_server, tmp_path):
    with pytest.raises(DownloadError, match=r"404.*by hand"):
        download(f"{http_server.url}/absent.pt", tmp_path, progress=False)
    assert not (tmp_path / "absent.pt").exists()


def test_unreachable_host_fails_fast_with_by_hand_message(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/RN50.pt"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path, sha256=PAYLOAD_SHA256)
    assert time.monotonic() - started < 5
    assert f"download {url} to {tmp_path / 'RN50.pt'} by hand" in str(info.value)


def test_silent_server_times_out(tmp_path):
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/RN50.pt"
        started = time.monotonic()
        with pytest.raises(DownloadError, match="timed out"):
            download(url, tmp_path, timeout=0.5, progress=False)
        assert time.monotonic() - started < 5


def test_timeout_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TAILCLIP_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="TAILCLIP_DOWNLOAD_TIMEOUT"):
        download("http://127.0.0.1:9/x.pt", tmp_path)
