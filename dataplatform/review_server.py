"""A small read-only HTTP server for the review sheets, so a reviewer opens them from the UI.

The Dagster UI cannot open a ``file://`` link ("Not allowed to load local resource"), and on a
deployed webserver the file is not on the reviewer's machine anyway. This serves the review
folder (``warehouse/review``, every date's sheets and index) and nothing else of the home:

- GET and HEAD only; anything else is 405. Files with a known type only (HTML, PNG, JPEG,
  JSON, CSS, text), each with its content type, ``nosniff`` and the sheets' own
  Content-Security-Policy (no script, no remote load), and never cached stale.
- A request path is decoded once and must name a file below the review folder: ``..``,
  ``.``, hidden names, backslashes, NULs and absolute or doubled slashes are refused, and a
  path whose real location (after symlinks) leaves the folder is not found.
- Bound to loopback by default. Requests must name an allowed host (loopback names, the host
  of ``DATAPLATFORM_REVIEW_URL``, and any ``--allow-host``), so a web page cannot reach it
  through DNS rebinding.

Run ``python -m dataplatform.review_server [--host H] [--port P]`` beside the webserver and set
``DATAPLATFORM_REVIEW_URL`` (for example ``http://127.0.0.1:8070``) where the stages run: the
asset metadata then links every sheet at that address.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from dataplatform.core.records.review_sheet import INDEX_NAME, REVIEW_URL_ENV, review_root
from dataplatform.core.store.home import Home, resolve_home

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8070
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".json": "application/json",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
# The sheets' own policy (images only from data: URIs, inline styles, no script), and no
# framing, forms or base URL.
CSP = (
    "default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
_INDEX_FILE = f"{INDEX_NAME}.html"


class Refused(Exception):
    """A request the server will not answer with a file; ``status`` says how it answers."""

    def __init__(self, status: HTTPStatus, why: str) -> None:
        super().__init__(why)
        self.status = status


def resolve_request(root: Path, target: str) -> Path:
    """The file or folder below ``root`` that the request target names, or ``Refused``.

    ``target`` is the request line's path (query and fragment are ignored). It is decoded
    once; every segment must be a plain name, and the real path must stay below ``root``.
    """
    path = urlsplit(target).path
    if not path.startswith("/") or path.startswith("//"):
        raise Refused(HTTPStatus.BAD_REQUEST, f"not a path below the review folder: {target!r}")
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise Refused(HTTPStatus.BAD_REQUEST, f"not UTF-8 once decoded: {target!r}") from None
    if "\x00" in decoded or "\\" in decoded or "//" in decoded:
        raise Refused(HTTPStatus.BAD_REQUEST, f"not a path below the review folder: {target!r}")
    segments = decoded.strip("/").split("/") if decoded.strip("/") else []
    if any(s.startswith(".") for s in segments):  # "..", ".", and hidden names
        raise Refused(HTTPStatus.NOT_FOUND, f"{decoded!r} is outside what is served")
    real_root = root.resolve()
    if not segments:  # the listing of dates, also before any sheet was rendered
        return real_root
    try:
        real = root.joinpath(*segments).resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise Refused(HTTPStatus.NOT_FOUND, f"{decoded!r} is not a review sheet") from None
    except OSError as exc:  # a symlink loop, a path too long
        raise Refused(HTTPStatus.NOT_FOUND, f"{decoded!r}: {exc.strerror}") from None
    if not real.is_relative_to(real_root):  # a symlink out of the folder
        raise Refused(HTTPStatus.NOT_FOUND, f"{decoded!r} is outside what is served")
    if real.is_file() and real.suffix.lower() not in CONTENT_TYPES:
        raise Refused(HTTPStatus.NOT_FOUND, f"{decoded!r} is not a kind of file that is served")
    return real


def allowed_hosts(base_url: str | None, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host names a request may address: loopback, the base URL's host, and ``extra``."""
    hosts = set(LOOPBACK_NAMES) | {h.lower() for h in extra if h}
    if base_url:
        name = urlsplit(base_url).hostname
        if name:
            hosts.add(name.lower())
    return frozenset(hosts)


def _host_name(header: str | None) -> str | None:
    """The name in a Host header, without its port (``[::1]:8070`` is ``::1``)."""
    if not header:
        return None
    try:
        return urlsplit(f"//{header}").hostname
    except ValueError:
        return None


class ReviewHandler(BaseHTTPRequestHandler):
    """Answers GET and HEAD with files below ``server.root``; nothing else."""

    server: ReviewServer
    server_version = "dataplatform-review"
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return self.server_version  # not the Python version

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _not_allowed(self) -> None:
        self.close_connection = True  # its body, unread, must not be taken for a request
        self._plain(
            HTTPStatus.METHOD_NOT_ALLOWED, "read only: GET and HEAD", {"Allow": "GET, HEAD"}
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _answer(self, body: bool) -> None:
        if _host_name(self.headers.get("Host")) not in self.server.hosts:
            self._plain(HTTPStatus.MISDIRECTED_REQUEST, "this host name is not served", body=body)
            return
        try:
            found = resolve_request(self.server.root, self.path)
        except Refused as refused:
            self._plain(refused.status, str(refused), body=body)
            return
        if found == self.server.root.resolve() or found.is_dir():
            self._folder(found, body)
            return
        self._file(found, body)

    def _folder(self, folder: Path, body: bool) -> None:
        if not urlsplit(self.path).path.endswith("/"):
            location = urlsplit(self.path).path + "/"
            self._plain(HTTPStatus.MOVED_PERMANENTLY, location, {"Location": location}, body)
            return
        index = folder / _INDEX_FILE
        if index.is_file():
            self._file(index, body)
        elif folder == self.server.root.resolve():
            self._bytes(_listing(folder).encode("utf-8"), CONTENT_TYPES[".html"], None, body)
        else:
            self._plain(HTTPStatus.NOT_FOUND, "no index here", body=body)

    def _file(self, path: Path, body: bool) -> None:
        try:
            # No symlink in the last step either, should one have been swapped in since.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            self._plain(HTTPStatus.NOT_FOUND, "not a review sheet", body=body)
            return
        with os.fdopen(fd, "rb") as handle:
            stat = os.fstat(handle.fileno())
            self._head(
                HTTPStatus.OK, CONTENT_TYPES[path.suffix.lower()], stat.st_size, stat.st_mtime
            )
            if body:
                shutil.copyfileobj(handle, self.wfile)

    def _bytes(self, data: bytes, content_type: str, mtime: float | None, body: bool) -> None:
        self._head(HTTPStatus.OK, content_type, len(data), mtime)
        if body:
            self.wfile.write(data)

    def _head(
        self,
        status: HTTPStatus,
        content_type: str,
        length: int,
        mtime: float | None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        if mtime is not None:
            self.send_header("Last-Modified", formatdate(mtime, usegmt=True))
        # A sheet is rendered again after every run and takedown: always revalidate.
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()

    def _plain(
        self,
        status: HTTPStatus,
        text: str,
        extra: dict[str, str] | None = None,
        body: bool = True,
    ) -> None:
        data = f"{status.value} {status.phrase}: {text}\n".encode()
        self._head(status, CONTENT_TYPES[".txt"], len(data), None, extra)
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        log.info("%s %s", self.address_string(), format % args)


def _listing(root: Path) -> str:
    """The dates that have review sheets, newest first, linking each date's index."""
    dates = (
        sorted(
            (p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("date=")),
            reverse=True,
        )
        if root.is_dir()
        else []
    )
    items = "".join(
        f'<li><a href="{html.escape(d, quote=True)}/{_INDEX_FILE}">{html.escape(d[5:])}</a></li>'
        for d in dates
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<link rel="icon" href="data:,"><title>Review sheets</title></head>'
        "<body><h1>Review sheets</h1>"
        + (f"<ul>{items}</ul>" if items else "<p>No review sheet has been rendered yet.</p>")
        + "</body></html>\n"
    )


class ReviewServer(ThreadingHTTPServer):
    """The review folder of one home, on one address."""

    daemon_threads = True

    def __init__(
        self, root: Path, address: tuple[str, int], hosts: frozenset[str] = frozenset()
    ) -> None:
        self.root = root
        self.hosts = hosts or allowed_hosts(None)
        super().__init__(address, ReviewHandler)


def make_server(
    home: Home,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    base_url: str | None = None,
    allow_hosts: Sequence[str] = (),
) -> ReviewServer:
    """A server for ``home``'s review sheets on ``host:port`` (port 0: any free port)."""
    if home.warehouse_url:
        raise ValueError(
            f"the warehouse is on {home.warehouse_url}: review sheets are rendered for a local "
            "warehouse only, so there is nothing to serve; unset DATAPLATFORM_WAREHOUSE_URL"
        )
    # Not created here: the server may read a home mounted read-only, before any sheet exists.
    root = review_root(home)
    return ReviewServer(root, (host, port), allowed_hosts(base_url, [host, *allow_hosts]))


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the review sheets of ``DATAPLATFORM_HOME`` until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m dataplatform.review_server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to bind (8070)")
    parser.add_argument("--home", default=None, help="the platform home (DATAPLATFORM_HOME)")
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        help="a further host name a request may address (repeatable)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    base_url = os.environ.get(REVIEW_URL_ENV, "").strip() or None
    try:
        server = make_server(
            resolve_home(args.home), args.host, args.port, base_url, args.allow_host
        )
    except (ValueError, OSError) as exc:
        print(f"review server: {exc}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    log.info(
        "serving %s on http://%s:%s/ (hosts: %s)",
        server.root,
        host,
        port,
        ", ".join(sorted(server.hosts)),
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
