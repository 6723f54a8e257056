"""remote_fetch against small HTTP servers on loopback (127.0.0.1 and 127.0.0.2), started here.

No test reaches any other address: refused addresses must be refused before any connection,
which the ``audit`` fixture proves by recording every ``socket.connect``.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dataplatform.core.ingest import remote_fetch
from dataplatform.core.ingest.image_decode import ImageRejected
from dataplatform.core.ingest.image_store import read_ref
from dataplatform.core.ingest.landing import ImageRef
from dataplatform.core.ingest.remote_fetch import ALLOW_NETWORKS_ENV, allowed_networks, fetch

PAYLOAD_A = bytes(range(256)) * 64
PAYLOAD_B = b"server B " * 100
NOT_ALLOWED = f", not in {ALLOW_NETWORKS_ENV}"


class _Handler(BaseHTTPRequestHandler):
    """Routes by path; ``self.server.state`` is the ``_Server`` that owns this handler."""

    def do_GET(self) -> None:
        state: _Server = self.server.state  # type: ignore[attr-defined]
        state.hosts_seen.append(self.headers["Host"])
        path, _, query = self.path.partition("?")
        try:
            if path == "/x.jpg":
                self._send(200, state.payload)
            elif path == "/redirect":
                self._redirect(urllib.parse.parse_qs(query)["to"][0])
            elif path == "/loop":
                self._redirect("/loop")
            elif path.startswith("/hops/"):
                left = int(path.removeprefix("/hops/"))
                if left:
                    self._redirect(f"/hops/{left - 1}")
                else:
                    self._send(200, state.payload)
            elif path == "/big":
                self._send(200, b"x" * 2048)
            elif path == "/big-unsized":
                # HTTP/1.0 without Content-Length: the body ends when the connection closes.
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"x" * 2048)
            elif path == "/big-chunked":
                head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
                self.wfile.write(head + chunk * 2 + b"0\r\n\r\n")
            elif path == "/truncated":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.write(b"x" * 10)
            elif path == "/trickle-body":
                self.send_response(200)
                self.send_header("Content-Length", str(10**6))
                self.end_headers()
                self._trickle(b"")
            elif path == "/trickle-headers":
                self._trickle(b"HTTP/1.0 200 OK\r\nX-Slow: ")
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _trickle(self, start: bytes) -> None:
        """``start`` one byte at a time, then one more byte every 0.1 s until the test ends."""
        stop: threading.Event = self.server.state.stop  # type: ignore[attr-defined]
        for byte in start:
            self.wfile.write(bytes([byte]))
            if stop.wait(0.1):
                return
        while not stop.wait(0.1):
            self.wfile.write(b"a")

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server:
    def __init__(self, host: str, payload: bytes, tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.payload = payload
        self.hosts_seen: list[str] = []
        self.stop = threading.Event()
        self.httpd = ThreadingHTTPServer((host, 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self  # type: ignore[attr-defined]
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def redirect_to(self, target: str) -> str:
        return self.url("/redirect?to=" + urllib.parse.quote(target, safe=""))

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_allowance(monkeypatch):
    """Every test starts from the default: nothing allowed beyond public addresses."""
    monkeypatch.delenv(ALLOW_NETWORKS_ENV, raising=False)


@pytest.fixture
def server_a():
    server = _Server("127.0.0.1", PAYLOAD_A)
    yield server
    server.close()


@pytest.fixture
def server_b():
    server = _Server("127.0.0.2", PAYLOAD_B)
    yield server
    server.close()


@pytest.fixture
def lookups(monkeypatch):
    """The hosts handed to ``socket.getaddrinfo``, which still answers as before."""
    seen: list[tuple[object, object]] = []
    real = socket.getaddrinfo

    def recording(host, port, *args, **kwargs):
        seen.append((host, port))
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    return seen


def _rejected(url: str, **kwargs) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        fetch(url, **kwargs)
    return info.value


MAPPED_LOOPBACK = ipaddress.ip_address("::ffff:127.0.0.1")
BLOCKED_LITERALS = [
    ("http://127.0.0.1:{port}/x.jpg", "127.0.0.1 is loopback"),
    ("http://2130706433:{port}/", "127.0.0.1 is loopback"),
    ("http://0x7f000001:{port}/", "127.0.0.1 is loopback"),
    ("http://0177.0.0.1:{port}/", "127.0.0.1 is loopback"),
    ("http://127.1:{port}/", "127.0.0.1 is loopback"),
    ("http://[::1]:{port}/", "::1 is loopback"),
    (
        "http://[::ffff:127.0.0.1]:{port}/",
        f"{MAPPED_LOOPBACK} is IPv4-mapped 127.0.0.1, which is loopback",
    ),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is link-local"),
    ("http://10.0.0.1/", "10.0.0.1 is private"),
    ("http://[fe80::1]/", "fe80::1 is link-local"),
    ("http://0.0.0.0:{port}/", "0.0.0.0 is unspecified"),
    ("http://224.0.0.1/", "224.0.0.1 is multicast"),
    ("http://[64:ff9b::7f00:1]/", "64:ff9b::7f00:1 is NAT64 for 127.0.0.1, which is loopback"),
    ("http://[2002:7f00:1::1]/", "2002:7f00:1::1 is 6to4 for 127.0.0.1, which is loopback"),
    ("http://100.64.0.1/", "100.64.0.1 is not globally routable"),
]


@pytest.mark.parametrize(("template", "why"), BLOCKED_LITERALS)
def test_a_refused_literal_never_connects_nor_resolves(
    server_a, audit, lookups, template: str, why: str
):
    # A live server listens on the port: only the check stands between the URL and it.
    url = template.format(port=server_a.port)
    rejected = _rejected(url)
    assert (rejected.reason, rejected.detail) == (
        "fetch_blocked_address",
        f"{url} -> {why}{NOT_ALLOWED}",
    )
    assert audit.connects == []
    assert lookups == []
    assert server_a.hosts_seen == []


def test_a_name_that_resolves_to_loopback_is_refused_after_one_lookup(server_a, audit, lookups):
    url = f"http://localhost:{server_a.port}/x.jpg"
    rejected = _rejected(url)
    assert rejected.reason == "fetch_blocked_address"
    assert rejected.detail.startswith(f"{url} -> ")
    assert rejected.detail.endswith(f" is loopback (resolved from localhost){NOT_ALLOWED}")
    assert lookups == [("localhost", server_a.port)]
    assert audit.connects == []


def test_one_blocked_address_among_public_ones_refuses_the_host(monkeypatch, audit):
    def public_and_loopback(host, port, *args, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("8.8.8.8", port)),
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", public_and_loopback)
    rejected = _rejected("http://mixed.example.test/x.jpg")
    assert (rejected.reason, rejected.detail) == (
        "fetch_blocked_address",
        "http://mixed.example.test/x.jpg -> 127.0.0.1 is loopback "
        f"(resolved from mixed.example.test){NOT_ALLOWED}",
    )
    assert audit.connects == []


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),
        ("2002:808:808::1", None),
        ("192.168.1.1", "192.168.1.1 is private"),
        ("fc00::1", "fc00::1 is private"),
        ("fec0::1", "fec0::1 is site-local"),
        ("ff02::1", "ff02::1 is multicast"),
        ("::", ":: is unspecified"),
        ("240.0.0.1", "240.0.0.1 is private"),
        ("255.255.255.255", "255.255.255.255 is private"),
    ],
)
def test_check_address_names_the_kind_of_address(address: str, expected: str | None):
    assert remote_fetch.check_address(ipaddress.ip_address(address)) == expected


def test_check_address_allows_what_the_allowance_names():
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    assert remote_fetch.check_address(ipaddress.ip_address("127.0.0.5"), loopback) is None
    assert remote_fetch.check_address(MAPPED_LOOPBACK, loopback) is None
    assert remote_fetch.check_address(ipaddress.ip_address("::1"), loopback) == "::1 is loopback"


def test_an_allowed_address_is_fetched_and_a_redirect_out_of_the_allowance_is_refused(
    server_a, server_b, audit, monkeypatch
):
    monkeypatch.setenv(ALLOW_NETWORKS_ENV, "127.0.0.1/32")
    assert fetch(server_a.url("/x.jpg")) == PAYLOAD_A
    assert audit.connects == [("127.0.0.1", server_a.port)]

    audit.connects.clear()
    target = server_b.url("/x.jpg")
    rejected = _rejected(server_a.redirect_to(target))
    assert (rejected.reason, rejected.detail) == (
        "fetch_blocked_address",
        f"redirect 1 to {target} -> 127.0.0.2 is loopback{NOT_ALLOWED}",
    )
    assert audit.connects == [("127.0.0.1", server_a.port)]
    assert server_b.hosts_seen == []

    monkeypatch.setenv(ALLOW_NETWORKS_ENV, "127.0.0.0/8")
    audit.connects.clear()
    assert fetch(server_a.redirect_to(target)) == PAYLOAD_B
    assert audit.connects == [("127.0.0.1", server_a.port), ("127.0.0.2", server_b.port)]


def test_an_explicit_allowance_overrides_the_environment(server_a, audit, monkeypatch):
    monkeypatch.setenv(ALLOW_NETWORKS_ENV, "127.0.0.0/8")
    rejected = _rejected(server_a.url("/x.jpg"), allow=())
    assert rejected.reason == "fetch_blocked_address"
    assert audit.connects == []
    assert fetch(server_a.url("/x.jpg"), allow=[ipaddress.ip_network("127.0.0.1/32")]) == PAYLOAD_A


@pytest.mark.parametrize(
    ("target", "scheme"),
    [
        ("file:///etc/passwd", "file"),
        ("ftp://127.0.0.1/x.jpg", "ftp"),
        ("gopher://127.0.0.1:70/_x", "gopher"),
    ],
)
def test_a_redirect_to_another_scheme_is_refused(server_a, audit, monkeypatch, target, scheme):
    monkeypatch.setenv(ALLOW_NETWORKS_ENV, "127.0.0.1/32")
    rejected = _rejected(server_a.redirect_to(target))
    assert (rejected.reason, rejected.detail) == (
        "fetch_blocked_scheme",
        f"redirect 1 to {target}: scheme {scheme!r} is not http or https",
    )
    assert audit.connects == [("127.0.0.1", server_a.port)]
    assert "/etc/passwd" not in audit.opens


def test_five_redirects_are_followed_and_a_sixth_is_refused(server_a, audit, monkeypatch):
    monkeypatch.setenv(ALLOW_NETWORKS_ENV, "127.0.0.1/32")
    assert fetch(server_a.url("/hops/5")) == PAYLOAD_A
    assert len(audit.connects) == 6

    audit.connects.clear()
    server_a.hosts_seen.clear()
    url = server_a.url("/loop")
    rejected = _rejected(url)
    assert (rejected.reason, rejected.detail) == (
        "fetch_too_many_redirects",
        f"{url}: more than 5 redirects (the last to {url})",
    )
    assert audit.connects == [("127.0.0.1", server_a.port)] * 6
    assert len(server_a.hosts_seen) == 6


@pytest.mark.parametrize("path", ["/trickle-body", "/trickle-headers"])
def test_a_trickling_server_is_cut_off_at_the_deadline(server_a, monkeypatch, path):
    monkeypatch.setenv(ALLOW_NETWORKS_ENV, "127.0.0.1/32")
    url = server_a.url(path)
    started = time.monotonic()
    rejected = _rejected(url, deadline_s=1.0)
    elapsed = time.monotonic() - started
    assert (rejected.reason, rejected.detail) == (
        "fetch_timeout",
        f"{url}: no complete response within 1 s",
    )
    assert 1.0 <= elapsed < 3.0


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/big", "Content-Length 2048 is over the cap of 1024 bytes"),
        ("/big-unsized", "the body is over the cap of 1024 bytes"),
        ("/big-chunked", "the body is over the cap of 1024 bytes"),
    ],
)
def test_a_body_over_the_cap_is_refused(server_a, monkeypatch, path, detail):
    monkeypatch.setenv(ALLOW_NETWORKS_ENV, "127.0.0.1/32")
    url = server_a.url(path)
    rejected = _rejected(url, max_bytes=1024)
    assert (rejected.reason, rejected.detail) == ("fetch_too_large", f"{url}: {detail}")
    assert fetch(url, max_bytes=2048) == b"x" * 2048


def test_http_errors_short_bodies_and_refused_connections_fail(server_a, monkeypatch):
    monkeypatch.setenv(ALLOW_NETWORKS_ENV, "127.0.0.1/32")
    missing = server_a.url("/missing.jpg")
    assert (_rejected(missing).reason, _rejected(missing).detail) == (
        "fetch_http_error",
        f"{missing}: HTTP 404 Not Found",
    )
    assert _rejected(missing).status == 404
    short = server_a.url("/truncated")
    assert (_rejected(short).reason, _rejected(short).detail) == (
        "fetch_failed",
        f"{short}: the connection closed after 10 of 100 bytes",
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    refused = _rejected(f"http://127.0.0.1:{closed_port}/x.jpg")
    assert refused.reason == "fetch_failed"
    assert "ConnectionRefusedError" in refused.detail
    malformed = _rejected("http://127.0.0.1:99999/x.jpg")
    assert malformed.reason == "fetch_failed"


def test_a_malformed_allowance_is_a_configuration_error(audit, monkeypatch):
    monkeypatch.setenv(ALLOW_NETWORKS_ENV, "127.0.0.0/8, ::1/128,")
    assert allowed_networks() == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    for bad in ("not-a-network", "10.1.2.3/8"):
        monkeypatch.setenv(ALLOW_NETWORKS_ENV, f"127.0.0.0/8,{bad}")
        with pytest.raises(ValueError, match=rf"{ALLOW_NETWORKS_ENV}: '{bad}' is not a network"):
            fetch("http://127.0.0.1/x.jpg")
    assert audit.connects == []


def test_read_ref_never_fetches_a_url_even_when_allowed(server_a, audit, monkeypatch):
    """Later stages read what the download step stored; a URL in a table is not fetched."""
    monkeypatch.setenv(ALLOW_NETWORKS_ENV, "127.0.0.1/32")
    ref = ImageRef(kind="remote", uri=server_a.url("/x.jpg"))
    with pytest.raises(ImageRejected) as info:
        read_ref(ref)
    assert info.value.reason == "not_downloaded"
    assert "url_downloads" in info.value.detail
    assert audit.connects == []


def _resolve_everything_to_loopback(monkeypatch) -> list[tuple[object, object]]:
    calls: list[tuple[object, object]] = []

    def answer(host, port, *args, **kwargs):
        calls.append((host, port))
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", answer)
    return calls


def test_each_hop_resolves_once_and_connects_to_the_checked_address(server_a, audit, monkeypatch):
    monkeypatch.setenv(ALLOW_NETWORKS_ENV, "127.0.0.1/32")
    calls = _resolve_everything_to_loopback(monkeypatch)
    port = server_a.port
    url = f"http://images.example.test:{port}/redirect?to=" + urllib.parse.quote(
        f"http://cdn.example.test:{port}/x.jpg", safe=""
    )
    assert fetch(url) == PAYLOAD_A
    assert calls == [("images.example.test", port), ("cdn.example.test", port)]
    assert audit.connects == [("127.0.0.1", port), ("127.0.0.1", port)]
    assert server_a.hosts_seen == [f"images.example.test:{port}", f"cdn.example.test:{port}"]


# --- TLS: the certificate is checked against the URL's host while connecting to the address.


def _tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for images.example.test, and a client context that
    trusts only the test CA that signed it."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key, issuer: str, signer, *, ca: bool):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            ).add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            ).add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("test CA", ca_key, "test CA", ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = certificate("images.example.test", leaf_key, "test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (tmp_path / "leaf.pem").write_bytes(
        leaf.public_bytes(pem)
        + leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "leaf.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server, client


def test_https_verifies_the_certificate_against_the_url_host(tmp_path, audit, monkeypatch):
    server_tls, client_tls = _tls_pair(tmp_path)
    server = _Server("127.0.0.1", PAYLOAD_A, tls=server_tls)
    try:
        monkeypatch.setenv(ALLOW_NETWORKS_ENV, "127.0.0.1/32")
        calls = _resolve_everything_to_loopback(monkeypatch)
        good = f"https://images.example.test:{server.port}/x.jpg"
        # The system's trust store does not know the test CA.
        untrusted = _rejected(good)
        assert untrusted.reason == "fetch_failed"
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.detail

        monkeypatch.setattr(remote_fetch, "_tls_context", lambda: client_tls)
        assert fetch(good) == PAYLOAD_A
        wrong_name = _rejected(f"https://other.example.test:{server.port}/x.jpg")
        assert wrong_name.reason == "fetch_failed"
        assert "Hostname mismatch" in wrong_name.detail
        assert calls == [
            ("images.example.test", server.port),
            ("images.example.test", server.port),
            ("other.example.test", server.port),
        ]
        assert audit.connects == [("127.0.0.1", server.port)] * 3
    finally:
        server.close()
