"""The review server: serves the review folder's sheets read-only, and nothing outside it."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataplatform.core.store.home import Home
from dataplatform.review_server import CSP, Refused, ReviewServer, make_server, resolve_request

DATE = "2025-01-02"
SHEET = b"<!DOCTYPE html><html><body>phash sheet</body></html>"
SECRET = b"SECRET outside the review folder"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Home, ReviewServer]]:
    tmp_path = tmp_path_factory.mktemp("served")
    home = Home(tmp_path / "home")
    folder = home.warehouse / "review" / f"date={DATE}"
    folder.mkdir(parents=True)
    (folder / "phash_deduped.html").write_bytes(SHEET)
    (folder / "index.html").write_bytes(b"<html>index</html>")
    (folder / "part.parquet").write_bytes(b"PAR1")
    (folder / ".hidden.html").write_bytes(SECRET)
    (home.warehouse / "catalog.duckdb").write_bytes(SECRET)
    (tmp_path / "secret.html").write_bytes(SECRET)
    (folder / "leak.html").symlink_to(tmp_path / "secret.html")
    (folder / "up").symlink_to(home.warehouse)
    server = make_server(home, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield home, server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _request(
    server: ReviewServer, path: str, method: str = "GET", host: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    port = server.server_address[1]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.putrequest(method, path, skip_host=host is not None)
        if host is not None:
            connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_a_sheet_is_served_with_its_type_and_the_sheets_policy(served):
    _, server = served
    status, headers, body = _request(server, f"/date={DATE}/phash_deduped.html")
    assert (status, body) == (200, SHEET)
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == CSP
    assert headers["Content-Length"] == str(len(SHEET))
    assert "Python" not in headers["Server"]
    status, headers, body = _request(server, f"/date%3D{DATE}/phash_deduped.html", "HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(SHEET)))


def test_folders_lead_to_their_index_and_the_root_lists_the_dates(served):
    _, server = served
    status, headers, _ = _request(server, f"/date={DATE}")
    assert status == 301 and headers["Location"] == f"/date={DATE}/"
    assert _request(server, f"/date={DATE}/")[2] == b"<html>index</html>"
    status, _, body = _request(server, "/")
    assert status == 200 and f'href="date={DATE}/index.html"'.encode() in body


@pytest.mark.parametrize(
    "path",
    [
        "/../catalog.duckdb",
        "/%2e%2e/catalog.duckdb",
        f"/date={DATE}/..%2f..%2fcatalog.duckdb",
        f"/date={DATE}/%2e%2e/%2e%2e/catalog.duckdb",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        f"/date={DATE}/..\\..\\catalog.duckdb",
        f"/date={DATE}/phash_deduped.html%00.png",
        f"/date={DATE}/.hidden.html",
        f"/date={DATE}/leak.html",  # a symlink out of the folder
        f"/date={DATE}/up/catalog.duckdb",  # through a symlinked folder
        f"/date={DATE}/part.parquet",  # not a kind of file that is served
        "/%ff",
        "/nothing.html",
    ],
)
def test_nothing_outside_the_review_folder_is_served(served, path):
    _, server = served
    status, _, body = _request(server, path)
    assert status in (400, 404)
    assert SECRET not in body and b"PAR1" not in body


def test_only_get_and_head_and_only_allowed_host_names(served):
    _, server = served
    status, headers, _ = _request(server, f"/date={DATE}/phash_deduped.html", "POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert _request(server, f"/date={DATE}/phash_deduped.html", "DELETE")[0] == 405
    # A page that rebinds its own name to 127.0.0.1 still sends its name.
    assert _request(server, f"/date={DATE}/index.html", host="evil.example")[0] == 421
    assert _request(server, f"/date={DATE}/index.html", host="localhost:1")[0] == 200


def test_the_base_urls_host_and_loopback_only_by_default(tmp_path: Path):
    home = Home(tmp_path / "home")  # nothing rendered yet, and nothing created
    server = make_server(home, "127.0.0.1", 0, base_url="http://reviews.example:8070")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert "reviews.example" in server.hosts and "evil.example" not in server.hosts
        status, _, body = _request(server, "/", host="reviews.example:8070")
        assert status == 200 and b"No review sheet has been rendered yet" in body
        assert _request(server, "/date=2025-01-01/index.html")[0] == 404
        assert not home.root.exists()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    with pytest.raises(ValueError, match="local warehouse only"):
        make_server(Home(tmp_path / "h2", warehouse_url="s3://bucket/wh"), "127.0.0.1", 0)


def test_resolve_request_refuses_what_leaves_the_root(tmp_path: Path):
    root = tmp_path / "review"
    (root / "date=x").mkdir(parents=True)
    (root / "date=x" / "a.html").write_text("a")
    assert resolve_request(root, "/date=x/a.html?q=1#f") == (root / "date=x" / "a.html").resolve()
    for target in ("relative", "/date=x/../../x", "/date=x/./a.html"):
        with pytest.raises(Refused):
            resolve_request(root, target)
