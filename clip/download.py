"""Fetch a file once: progress bar, resume of a partial download, sha256 check.

Used for the CLIP weights and vocabulary (`clip.load`) and for the benchmark data
(the project's dataset downloads). Only the standard library's urllib, so http(s):// and file://
addresses both work and nothing else needs installing.
"""
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .errors import ClipError

CHUNK_BYTES = 1 << 20
TIMEOUT_ENV = "TAILCLIP_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0
# Connection-level failures: no network, refused, reset, timed out, cut short.
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


class DownloadError(ClipError, RuntimeError):
    """A download failed; the message names the address and where to put the file by hand."""


def sha256_of(path: str | Path) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, root: str | Path, sha256: str | None = None, filename: str | None = None,
             progress: bool | None = None, timeout: float | None = None) -> Path:
    """Download `url` to `root/filename` (default: the address's last path segment) and return the path.

    An existing file is kept when it has the expected sha256 (or when no sha256 is given) and
    fetched again otherwise. Bytes go to `<file>.part` first; a `.part` left by an interrupted
    run is continued with an HTTP Range request. A sha256 mismatch removes the bad file.
    `progress` draws a progress bar (default: when standard error is a terminal).
    `timeout` (seconds; default `$TAILCLIP_DOWNLOAD_TIMEOUT` or 30) bounds the connection and
    each read, and there is no retry, so an offline machine fails at once.
    Raises `DownloadError` naming the address and the path to fill by hand.
    """
    name = filename or Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name:
        raise ValueError(f"cannot tell a file name from {url!r}; pass filename=")
    target = Path(root).expanduser().absolute() / name
    expected = sha256.lower() if sha256 else None
    if target.is_file():
        if expected is None or sha256_of(target) == expected:
            return target
        print(f"{target} does not have sha256 {expected}: downloading it again", file=sys.stderr)
        target.unlink()

    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    by_hand = f"download {url} to {target} by hand"
    try:
        _fetch(url, part, target.name, sys.stderr.isatty() if progress is None else progress,
               _timeout_s(timeout))
    except NETWORK_ERRORS as error:
        raise DownloadError(f"could not download {url} ({error}). Check the network and run again "
                            f"(a partial download resumes), or {by_hand}.") from error
    if expected is not None:
        actual = sha256_of(part)
        if actual != expected:
            part.unlink()
            raise DownloadError(f"sha256 mismatch for {target}: expected {expected}, got {actual}; "
                                f"the bad file was removed. Run again, or {by_hand}.")
    os.replace(part, target)
    return target


def _timeout_s(timeout: float | None) -> float:
    if timeout is not None:
        return timeout
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"${TIMEOUT_ENV} must be a number of seconds, got {value!r}") from None


def _fetch(url: str, part: Path, label: str, progress: bool, timeout: float) -> None:
    """Write the bytes of `url` to `part`, continuing what `part` already holds when the server allows."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "tailclip-download"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code != 416 or not offset:
            raise
        # 416: nothing lies past `offset`. The partial file is whole when the server's
        # total size ("bytes */<size>") equals it; otherwise it is stale, so start again.
        if error.headers.get("Content-Range", "").rpartition("/")[2] == str(offset):
            return
        part.unlink()
        return _fetch(url, part, label, progress, timeout)

    with response:
        if offset and response.status != 206:  # Range ignored (or file://): the body is the whole file
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as out, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=label, disable=not progress) as bar:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))
    received = part.stat().st_size
    if total is not None and received < total:  # http.client returns short reads silently
        raise ConnectionError(f"connection closed after {received} of {total} bytes")
