"""A loopback image server for download tests and the download bench: counts every request.

Paths say what the server does, so a manifest can mix outcomes:

- ``/img/<n>.jpg``: a real photograph (``n`` picks which and its size), 200;
- ``/missing/<anything>``: 404;
- ``/slow/<anything>``: waits ``slow_s`` before answering (longer than a test's deadline);
- ``/optout/<anything>``: a photograph with ``X-Robots-Tag: noai``;
- ``/otherbot/<anything>``: a photograph with ``X-Robots-Tag: otherbot: noai`` (not for us);
- ``/to-metadata/<anything>``: a redirect to the cloud metadata address (must be refused);
- ``/html/<anything>``: an HTML page with status 200;
- ``/flaky/<anything>``: 503 with ``Retry-After: 0`` the first time, a photograph after;
- ``/big/<anything>``: a 2 MiB body;
- ``/down/<n>.jpg``: 404 while its path is in ``down``, a photograph once it is removed;
- ``/_hits``: the counts so far as JSON, itself not counted (for a server in another process).

Every request is counted per path (``hits``), and the most requests in flight at once is
kept (``most_in_flight``), so tests can assert "requested exactly once" and per-host limits.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from collections import Counter
from functools import cache

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "china",
    "flower",
    "hubble_deep_field",
    "retina",
    "motorcycle_left",
    "ihc",
)


def photo_bytes(n: int) -> bytes:
    """A JPEG of a real photograph: ``n`` below ten is one of ``PHOTOS`` at its own size, and
    each later ten repeats them smaller, in 16 sizes (so a bench's thousands of URLs are served
    from 170 encoded images, not encoded per request)."""
    if n < len(PHOTOS):
        return _photo(n, 0)
    return _photo(n % len(PHOTOS), 1 + n // len(PHOTOS) % 16)


@cache
def _photo(index: int, size_step: int) -> bytes:
    from tests.conftest import photo

    image = photo(PHOTOS[index]).convert("RGB")
    if size_step:
        side = 60 + 4 * size_step
        image = image.resize((side + side // 3, side))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # a bench's many concurrent connections are not refused


class ImageServer:
    """A threading HTTP server on ``host``; ``latency_s`` is added to every answer."""

    def __init__(self, host: str = "127.0.0.1", latency_s: float = 0.0, slow_s: float = 5.0):
        self.hits: Counter[str] = Counter()
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.most_in_flight = 0
        self.down: set[str] = set()
        self._in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path == "/_hits":
                    with server._lock:
                        counts = json.dumps(dict(server.hits)).encode()
                    return self._send(200, counts, "application/json")
                with server._lock:
                    server.hits[self.path] += 1
                    first = server.hits[self.path] == 1
                    server._in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server._in_flight)
                try:
                    if server.latency_s:
                        time.sleep(server.latency_s)
                finally:
                    # Counted out before answering: once the answer is sent, the client may
                    # rightly send its next request while this handler is still unwinding.
                    with server._lock:
                        server._in_flight -= 1
                self._answer(first)

            def _answer(self, first: bool) -> None:
                kind = self.path.split("/")[1] if self.path.count("/") >= 1 else ""
                if kind == "missing":
                    return self._send(404, b"not here", "text/plain")
                if kind == "slow":
                    time.sleep(server.slow_s)
                    return self._send(200, photo_bytes(0), "image/jpeg")
                if kind == "optout":
                    return self._send(200, photo_bytes(1), "image/jpeg", {"X-Robots-Tag": "noai"})
                if kind == "otherbot":
                    headers = {"X-Robots-Tag": "otherbot: noai"}
                    return self._send(200, photo_bytes(2), "image/jpeg", headers)
                if kind == "to-metadata":
                    headers = {"Location": "http://169.254.169.254/latest/meta-data/"}
                    return self._send(302, b"", "text/plain", headers)
                if kind == "html":
                    return self._send(200, b"<html><body>gone</body></html>", "text/html")
                if kind == "flaky" and first:
                    return self._send(503, b"busy", "text/plain", {"Retry-After": "0"})
                if kind == "down" and self.path in server.down:
                    return self._send(404, b"not yet", "text/plain")
                if kind == "big":
                    return self._send(200, b"\xff" * (2 * 1024 * 1024), "image/jpeg")
                try:
                    n = int(self.path.rsplit("/", 1)[-1].split(".")[0])
                except ValueError:
                    n = 3
                return self._send(200, photo_bytes(n), "image/jpeg")

            def _send(
                self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = _Server((host, 0), Handler)
        self.port = self._server.server_port
        self.host = host
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
