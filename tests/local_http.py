"""A local HTTP server for download tests: 127.0.0.1 only, never the network."""
import urllib.parse
from http.server import SimpleHTTPRequestHandler
from pathlib import Path


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """Serves files from `directory`, honours `Range: bytes=N-`, and records every request.

    Server switches: `honour_range` (False: answer 200 with the whole file, as some servers
    do) and `cut_after` (send only that many body bytes, then drop the connection).
    """

    def do_GET(self):
        server = self.server
        range_header = self.headers.get("Range")
        server.requests.append((self.path, range_header))
        path = Path(self.directory) / urllib.parse.unquote(self.path.lstrip("/"))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(range_header.removeprefix("bytes=").removesuffix("-")) if range_header else 0
        if not server.honour_range or start == 0:
            self.send_response(200)
            start = 0
        elif start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        else:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = body if server.cut_after is None else body[:server.cut_after]
        # Counted before the write: once the bytes are out, the client (the test) may read
        # them and check the count before this thread runs on.
        server.body_bytes_sent += len(sent)
        self.wfile.write(sent)
        if server.cut_after is not None:
            self.close_connection = True

    def log_message(self, *args):
        pass


