"""Fetching one remote image safely: http(s) only, public addresses only, one deadline, one cap.

An image URL in a manifest is input from whoever wrote the manifest. Fetched naively, it turns
the ingest workers into a proxy into the network they run in (server-side request forgery):
cloud metadata at 169.254.169.254, services on loopback or the private network, and, through
redirects, anything a hostile server points at. So every hop (the URL and each redirect) is
checked before anything is sent:

- the scheme is http or https;
- the host is resolved once, and every address it resolves to must be globally routable: no
  loopback, private, link-local, multicast, reserved or unspecified address, nor an IPv6 address
  that carries such an IPv4 one, unless ``DATAPLATFORM_ALLOW_NETWORKS`` names it. A host that
  is an address literal, in any spelling a resolver accepts (``2130706433``, ``0x7f.1``,
  ``[::ffff:127.0.0.1]``), is judged before any resolver sees it;
- the connection goes to the checked address itself, so there is no second DNS answer that
  could differ from the checked one (DNS rebinding). TLS still verifies the certificate against
  the host name in the URL, and the request carries that host name.

One deadline covers the whole fetch (DNS, connect, TLS, headers, body, every redirect), so a
server that trickles bytes cannot hold a worker; the body is capped while it is read.

Proxy environment variables (``http_proxy``, ``https_proxy``, ``no_proxy``) are ignored on
purpose: through a proxy, the proxy would choose the address connected to, not these checks.

Every failure is an ``ImageRejected`` with one of the ``fetch_*`` ledger reasons below.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dataplatform.core.ingest.image_decode import ImageRejected

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_NETWORKS_ENV = "DATAPLATFORM_ALLOW_NETWORKS"
# Ample for a large photo from a slow server; a stuck server costs a worker half a minute.
DEFAULT_FETCH_DEADLINE_S = 30.0
# Far above any real photo: a larger body is a mistake or an attack, not a training image.
MAX_REMOTE_BYTES = 64 * 1024 * 1024
# An image host needs one or two; a few more bound the work one hostile URL can cause.
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}
# Names the platform and the opt-out it honours, so a site operator can find what fetched.
USER_AGENT = "dataplatform-ingest/1 (image-text curation; honours X-Robots-Tag noai, noimageai)"

# Ledger reasons.
BLOCKED_ADDRESS = "fetch_blocked_address"
BLOCKED_SCHEME = "fetch_blocked_scheme"
TOO_MANY_REDIRECTS = "fetch_too_many_redirects"
TIMEOUT = "fetch_timeout"
TOO_LARGE = "fetch_too_large"
FAILED = "fetch_failed"
# The server answered, but not with the image: a status outside 2xx (detail "HTTP 404 Not Found").
HTTP_ERROR = "fetch_http_error"
# The server asked, by an X-Robots-Tag directive such as noai, that the image not be used.
OPTED_OUT = "fetch_opted_out"
# The body arrived but no image decoder recognises it (an HTML error page, say).
NOT_AN_IMAGE = "fetch_not_an_image"
# A URL of the day's manifest that the download step has not fetched (it has not run since).
NOT_DOWNLOADED = "not_downloaded"

_CHUNK_BYTES = 64 * 1024
# A Location header is attacker-chosen text; the ledger keeps a readable prefix of it.
_SHOWN_URL_CHARS = 200
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)\Z", re.IGNORECASE)


@dataclass(frozen=True)
class Fetched:
    """What a fetch got: the body, and what a download's status table records about it."""

    body: bytes
    final_url: str
    status: int
    content_type: str
    redirects: int


# Called with the final response's headers before its body is read; returning a reason and a
# detail refuses the image (the body is never read), as an opt-out header asks.
HeaderCheck = Callable[[http.client.HTTPMessage], tuple[str, str] | None]


def fetch(
    url: str,
    *,
    deadline_s: float = DEFAULT_FETCH_DEADLINE_S,
    max_bytes: int = MAX_REMOTE_BYTES,
    allow: Sequence[IPNetwork] | None = None,
) -> bytes:
    """The body at ``url``, following up to ``MAX_REDIRECTS`` redirects, checking every hop.

    ``allow`` defaults to ``allowed_networks()``, read now, so worker processes follow the
    environment they inherit. Raises ``ImageRejected`` with a ``fetch_*`` reason on any failure;
    only a malformed ``DATAPLATFORM_ALLOW_NETWORKS`` raises ``ValueError``, since that is a
    configuration error, not a property of this image.
    """
    return fetch_response(url, deadline_s=deadline_s, max_bytes=max_bytes, allow=allow).body


def fetch_response(
    url: str,
    *,
    deadline_s: float = DEFAULT_FETCH_DEADLINE_S,
    max_bytes: int = MAX_REMOTE_BYTES,
    allow: Sequence[IPNetwork] | None = None,
    user_agent: str = USER_AGENT,
    check_headers: HeaderCheck | None = None,
) -> Fetched:
    """``fetch`` with what the downloader records: the final URL, status and content type.

    ``check_headers`` sees the final response's headers before the body is read (an opt-out
    header refuses the image without downloading it). A refusal, a non-2xx status
    (``fetch_http_error``, with the status in ``ImageRejected.status``) and every other failure
    raise ``ImageRejected``.
    """
    networks = allowed_networks() if allow is None else tuple(allow)
    first_url = url
    with _Deadline(deadline_s) as deadline:
        for hop in range(MAX_REDIRECTS + 1):
            where = _shown(url) if hop == 0 else f"redirect {hop} to {_shown(url)}"
            try:
                outcome = _fetch_hop(
                    url, where, deadline, max_bytes, networks, user_agent, check_headers
                )
            except ImageRejected:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure to get the bytes is this image's
                if deadline.expired or isinstance(exc, TimeoutError | _DeadlinePassed):
                    raise ImageRejected(
                        TIMEOUT, f"{where}: no complete response within {deadline_s:g} s"
                    ) from exc
                raise ImageRejected(FAILED, f"{where}: {_describe(exc)}") from exc
            if isinstance(outcome, tuple):
                body, status, content_type = outcome
                return Fetched(body, url, status, content_type, hop)
            url = outcome
    raise ImageRejected(
        TOO_MANY_REDIRECTS,
        f"{_shown(first_url)}: more than {MAX_REDIRECTS} redirects (the last to {_shown(url)})",
    )


class HTTPStatusRejected(ImageRejected):
    """A ``fetch_http_error``: the server answered ``status``; ``retry_after_s`` if it said."""

    def __init__(self, detail: str, status: int, retry_after_s: float | None) -> None:
        super().__init__(HTTP_ERROR, detail)
        self.status = status
        self.retry_after_s = retry_after_s


def allowed_networks() -> tuple[IPNetwork, ...]:
    """The networks ``DATAPLATFORM_ALLOW_NETWORKS`` names: comma-separated CIDRs, empty by default.

    For test servers and private mirrors (``127.0.0.0/8,::1/128``). Host bits must be zero, so a
    typo such as ``10.1.2.3/8`` is an error rather than a silently wider allowance.
    """
    networks = []
    for item in os.environ.get(ALLOW_NETWORKS_ENV, "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as exc:
            raise ValueError(
                f"{ALLOW_NETWORKS_ENV}: {item!r} is not a network in CIDR form "
                f"such as 127.0.0.0/8 or ::1/128 ({exc})"
            ) from None
    return tuple(networks)


def check_address(ip: IPAddress, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Why ``ip`` must not be connected to (``"127.0.0.1 is loopback"``), or None if it may be.

    An address inside one of ``allow`` may always be connected to. An IPv6 address that carries
    an IPv4 one is judged by it: IPv4-mapped (``::ffff:a.b.c.d``, which a dual-stack socket
    connects to as IPv4) and NAT64 (``64:ff9b::/96``, which the gateway forwards to the IPv4
    address) by the IPv4 address alone; 6to4 (``2002::/16``) by both.
    """
    if any(ip in network for network in allow):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _embedded_refusal(ip, "IPv4-mapped", ip.ipv4_mapped, allow)
        if ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            return _embedded_refusal(ip, "NAT64 for", embedded, allow)
        if ip.sixtofour is not None:
            refused = _embedded_refusal(ip, "6to4 for", ip.sixtofour, allow)
            if refused is not None:
                return refused
    category = _category(ip)
    return None if category is None else f"{ip} is {category}"


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` spells, or None when it is a name to resolve.

    IPv4 in every form a resolver accepts (``inet_aton``): decimal, octal and hex parts, and
    short forms whose last part fills the remaining bytes (``127.1``, ``2130706433``). A host of
    numeric parts that is no valid address raises ``ValueError`` rather than going to DNS.
    """
    if ":" in host:
        return ipaddress.IPv6Address(host)
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    if not all(_NUMERIC_LABEL.match(label) for label in labels):
        return None
    invalid = ValueError(f"host {host!r} looks numeric but is not a valid IPv4 address")
    try:
        values = [_ipv4_part(label) for label in labels]
    except ValueError:
        raise invalid from None
    *front, last = values
    if len(values) > 4 or any(v > 255 for v in front) or last >= 256 ** (5 - len(values)):
        raise invalid
    value = last
    for i, part in enumerate(front):
        value += part << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _ipv4_part(label: str) -> int:
    """One part of an ``inet_aton`` address: ``0x`` hex, leading-zero octal, or decimal."""
    if label[:2].lower() == "0x":
        return int(label[2:] or "0", 16)
    return int(label, 8 if len(label) > 1 and label[0] == "0" else 10)


def _embedded_refusal(
    ip: ipaddress.IPv6Address, how: str, embedded: ipaddress.IPv4Address, allow
) -> str | None:
    if any(embedded in network for network in allow):
        return None
    category = _category(embedded)
    return None if category is None else f"{ip} is {how} {embedded}, which is {category}"


def _category(ip: IPAddress) -> str | None:
    """What kind of address ``ip`` is when it is not one to fetch from; the first that fits."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


def _fetch_hop(
    url: str,
    where: str,
    deadline: _Deadline,
    max_bytes: int,
    allow: tuple[IPNetwork, ...],
    user_agent: str,
    check_headers: HeaderCheck | None,
) -> tuple[bytes, int, str] | str:
    """One request: (body, status, content type) on a 2xx, the next URL on a redirect."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ImageRejected(BLOCKED_SCHEME, f"{where}: scheme {scheme!r} is not http or https")
    host = parts.hostname
    if not host:
        raise ImageRejected(FAILED, f"{where}: the URL has no host")
    port = DEFAULT_PORTS[scheme] if parts.port is None else parts.port
    literal = literal_address(host)
    if literal is not None:
        _refuse_blocked(literal, where, allow, resolved_from=None)
    addresses = _resolve(str(literal) if literal else host, port, literal is not None, deadline)
    for *_, sockaddr in addresses:
        _refuse_blocked(
            ipaddress.ip_address(sockaddr[0]), where, allow, resolved_from=literal or host
        )
    connection_type = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    connection = connection_type(host, port, addresses, deadline)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request(
            "GET",
            target,
            headers={"User-Agent": user_agent, "Accept": "image/*", "Connection": "close"},
        )
        deadline.tighten()
        response = connection.getresponse()
        if response.status in REDIRECT_STATUSES:
            location = response.getheader("Location")
            if not location:
                raise ImageRejected(
                    FAILED, f"{where}: HTTP {response.status} without a Location header"
                )
            return urllib.parse.urljoin(url, location.strip())
        if not 200 <= response.status < 300:
            raise HTTPStatusRejected(
                f"{where}: HTTP {response.status} {_shown(response.reason or '')}".rstrip(),
                response.status,
                _retry_after(response.getheader("Retry-After")),
            )
        if check_headers is not None:
            refused = check_headers(response.msg)
            if refused is not None:
                raise ImageRejected(refused[0], f"{where}: {refused[1]}")
        body = _read_body(response, where, deadline, max_bytes)
        return body, response.status, response.getheader("Content-Type") or ""
    finally:
        deadline.release()
        connection.close()


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header in its delay form; the date form is not trusted."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def _refuse_blocked(
    ip: IPAddress, where: str, allow: tuple[IPNetwork, ...], resolved_from: object
) -> None:
    refused = check_address(ip, allow)
    if refused is None:
        return
    if resolved_from is not None and str(resolved_from) != str(ip):
        refused += f" (resolved from {resolved_from})"
    raise ImageRejected(BLOCKED_ADDRESS, f"{where} -> {refused}, not in {ALLOW_NETWORKS_ENV}")


def _resolve(host: str, port: int, numeric: bool, deadline: _Deadline) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` once, within the deadline: it has no timeout of its own, so it runs in a
    daemon thread that is abandoned (and finishes on its own) if the deadline passes first."""
    flags = socket.AI_NUMERICHOST if numeric else 0
    answer: list[tuple[Any, ...]] = []
    failure: list[Exception] = []

    def lookup() -> None:
        try:
            answer.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags))
        except Exception as exc:  # noqa: BLE001 - handed to the fetching thread
            failure.append(exc)

    if numeric:
        lookup()  # an address literal is parsed, never looked up: it cannot block
    else:
        thread = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
        thread.start()
        thread.join(deadline.left())
        if thread.is_alive():
            raise _DeadlinePassed
    if failure:
        raise failure[0]
    unique = list(
        dict.fromkeys(
            (family, kind, proto, sockaddr) for family, kind, proto, _, sockaddr in answer
        )
    )
    if not unique:
        raise OSError(f"{host} resolves to no address")
    return unique


def _read_body(
    response: http.client.HTTPResponse, where: str, deadline: _Deadline, max_bytes: int
) -> bytes:
    expected = response.length
    if expected is not None and expected > max_bytes:
        raise ImageRejected(
            TOO_LARGE, f"{where}: Content-Length {expected} is over the cap of {max_bytes} bytes"
        )
    body = bytearray()
    while True:
        deadline.tighten()
        chunk = response.read1(_CHUNK_BYTES)
        if not chunk:
            break
        body += chunk
        if len(body) > max_bytes:
            raise ImageRejected(
                TOO_LARGE, f"{where}: the body is over the cap of {max_bytes} bytes"
            )
    # The deadline's timer ends a trickling body by shutting the socket, which reads as an end.
    if deadline.expired:
        raise _DeadlinePassed
    if expected is not None and len(body) < expected:
        raise ImageRejected(
            FAILED, f"{where}: the connection closed after {len(body)} of {expected} bytes"
        )
    return bytes(body)


def _describe(exc: Exception) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc})"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return f"TLS failed ({exc})"
    return f"{type(exc).__name__}: {exc}"


def _shown(url: str) -> str:
    return url if len(url) <= _SHOWN_URL_CHARS else url[:_SHOWN_URL_CHARS] + "..."


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The system's trust store with hostname checks; built once per process (it costs ~25 ms)."""
    return ssl.create_default_context()


class _DeadlinePassed(Exception):
    """The fetch's deadline passed; reported as ``fetch_timeout`` by ``fetch``."""


class _Deadline:
    """One deadline for a whole fetch.

    Each socket operation waits at most the time left, but a server that sends one byte just
    before every socket timeout would never trip it; so a timer also shuts the current socket
    down when the deadline passes, which ends any read or handshake in progress.
    """

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.expired = False
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    def left(self) -> float:
        """Seconds left; raises ``_DeadlinePassed`` when there are none."""
        left = self._end - time.monotonic()
        if left <= 0 or self.expired:
            raise _DeadlinePassed
        return left

    def watch(self, sock: socket.socket) -> None:
        """Make ``sock`` the socket the timer shuts down, with a timeout of the time left."""
        with self._lock:
            if self.expired:
                raise _DeadlinePassed
            self._sock = sock
        sock.settimeout(self.left())

    def tighten(self) -> None:
        """Shorten the watched socket's timeout to the time left, before a blocking step."""
        with self._lock:
            sock = self._sock
        if sock is not None:
            sock.settimeout(self.left())

    def release(self) -> None:
        """Stop watching the socket, before it is closed (so its descriptor is never reused
        under the timer)."""
        with self._lock:
            self._sock = None

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                # The plain socket's shutdown, also for a TLS socket: it acts on the descriptor
                # and leaves the TLS object alone while another thread is inside it.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)


def _connect_pinned(addresses: list[tuple[Any, ...]], deadline: _Deadline) -> socket.socket:
    """A TCP connection to the first of the checked ``addresses`` that answers; no name lookup."""
    error: OSError | None = None
    for family, kind, proto, sockaddr in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            deadline.watch(sock)
            sock.connect(sockaddr)
        except OSError as exc:
            deadline.release()
            sock.close()
            if isinstance(exc, TimeoutError):
                raise
            error = exc
            continue
        except BaseException:
            deadline.release()
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    assert error is not None
    raise error


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to an address checked beforehand, with the URL's host in the Host header."""

    def __init__(
        self, host: str, port: int, addresses: list[tuple[Any, ...]], deadline: _Deadline
    ) -> None:
        super().__init__(host, port)
        self._addresses = addresses
        self._deadline = deadline

    def connect(self) -> None:
        self.sock = _connect_pinned(self._addresses, self._deadline)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address checked beforehand; the certificate is checked against the URL's host."""

    def __init__(
        self, host: str, port: int, addresses: list[tuple[Any, ...]], deadline: _Deadline
    ) -> None:
        tls = _tls_context()
        super().__init__(host, port, context=tls)
        self._tls = tls
        self._addresses = addresses
        self._deadline = deadline

    def connect(self) -> None:
        raw = _connect_pinned(self._addresses, self._deadline)
        try:
            tls = self._tls.wrap_socket(
                raw, server_hostname=self.host, do_handshake_on_connect=False
            )
        except BaseException:
            self._deadline.release()
            raw.close()
            raise
        self.sock = tls
        # Watch the TLS socket before the handshake, so a trickled handshake is cut off too.
        self._deadline.watch(tls)
        tls.do_handshake()
