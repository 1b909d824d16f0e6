"""SSRF guard and guarded HTTP fetch for the image downloader.

The competition JSON is third-party data: any URL in it (or any redirect
served by a host it names) could point at an internal service, e.g. the
cloud metadata endpoint on 169.254.169.254 that hands out credentials. The
downloader therefore checks every URL it is about to request, including each
redirect hop, with :func:`check_url`, and connects through
:func:`guarded_pool_manager`, whose connections re-check the address the
socket actually reached. The second check closes the DNS-rebinding window
between resolving a name in :func:`check_url` and urllib3 resolving it again
to connect: a blocked peer is disconnected before any request byte is sent.
:class:`GuardedFetcher` combines both and follows redirects itself (urllib3's
automatic redirects would skip the per-hop check).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3 import exceptions as u3exc
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = [
    "BlockedURL",
    "FetchError",
    "FetchPolicy",
    "GuardedFetcher",
    "address_problem",
    "check_url",
    "guarded_pool_manager",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[Any]]

ALLOWED_SCHEMES = frozenset({"http", "https"})

# Cloud instance-metadata endpoints (AWS/GCP/Azure/OpenStack IPv4, AWS IPv6
# and Alibaba). They are refused even when private/loopback ranges are allowed.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


class BlockedURL(ValueError):
    """The URL may not be fetched; the message says why."""


def address_problem(
    address: str | IPAddress, *, allow_loopback: bool = False, allow_private: bool = False
) -> str | None:
    """Return why ``address`` may not be contacted, or None when it may.

    Args:
        address: an IPv4/IPv6 address (a zone suffix such as ``%eth0`` is ignored).
        allow_loopback: permit 127.0.0.0/8 and ::1 (tests, local mirrors).
        allow_private: permit RFC 1918 / ULA / CGNAT and other non-global
            unicast ranges (a mirror on the LAN). Link-local, multicast,
            reserved, unspecified and metadata addresses stay refused.
    """
    ip = ipaddress.ip_address(str(address).split("%", 1)[0])
    # An IPv4-mapped IPv6 address (::ffff:10.0.0.1) reaches the IPv4 host.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    if ip.is_unspecified:
        return f"{ip} is an unspecified address"
    if ip.is_loopback:
        return None if allow_loopback else f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if ip.is_reserved:
        return f"{ip} is a reserved address"
    if not ip.is_global:
        # is_private misses some non-routable ranges (100.64/10, 192.0.0/24...);
        # "not global" is the conservative test.
        return None if allow_private else f"{ip} is a private (non-global) address"
    return None


def check_url(
    url: str,
    *,
    allow_loopback: bool = False,
    allow_private: bool = False,
    resolver: Resolver = socket.getaddrinfo,
) -> list[str]:
    """Refuse URLs that must not be fetched; return the resolved addresses.

    Every address the host name resolves to must pass
    :func:`address_problem`, since the connection may use any of them.

    Args:
        url: absolute http(s) URL.
        allow_loopback, allow_private: see :func:`address_problem`.
        resolver: ``socket.getaddrinfo``-compatible function.

    Raises:
        BlockedURL: non-http(s) scheme, no host, bad port, or a refused address.
        OSError: (``socket.gaierror``) the name does not resolve; this is a
            network failure, not a policy decision, so callers may retry it.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise BlockedURL(f"malformed URL {url!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise BlockedURL(f"scheme {scheme or '(none)'!r} is not allowed (only http/https)")
    if not host:
        raise BlockedURL(f"URL has no host: {url!r}")
    if port is None:
        port = 443 if scheme == "https" else 80
    try:
        addresses = [str(ipaddress.ip_address(host))]  # a literal: nothing to resolve
    except ValueError:
        infos = resolver(host, port, type=socket.SOCK_STREAM)
        addresses = sorted({info[4][0] for info in infos})
    if not addresses:
        raise OSError(f"host {host!r} resolved to no address")
    for address in addresses:
        problem = address_problem(
            address, allow_loopback=allow_loopback, allow_private=allow_private
        )
        if problem:
            shown = host if host == address else f"{host} -> {address}"
            raise BlockedURL(f"refused {shown}: {problem}")
    return addresses


def guarded_pool_manager(
    *, allow_loopback: bool = False, allow_private: bool = False, **pool_kw: Any
) -> urllib3.PoolManager:
    """A ``urllib3.PoolManager`` whose sockets refuse blocked peers.

    Each new connection checks ``getpeername()`` with
    :func:`address_problem` right after the TCP handshake and closes the
    socket (raising :class:`BlockedURL`) before TLS or any HTTP byte. Use it
    together with :func:`check_url` (which avoids even the handshake); it
    does not follow redirects by itself, callers pass ``redirect=False``.
    """
    policy = {"allow_loopback": allow_loopback, "allow_private": allow_private}

    def new_conn(self: HTTPConnection, base: type[HTTPConnection]) -> socket.socket:
        sock = base._new_conn(self)
        try:
            peer = sock.getpeername()[0]
            problem = address_problem(peer, **policy)
        except (OSError, ValueError) as exc:
            problem = f"cannot check peer address: {exc}"
        if problem:
            sock.close()
            raise BlockedURL(f"refused connection to {self.host}: {problem}")
        return sock

    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self, HTTPConnection)

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self, HTTPSConnection)

    class GuardedHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    manager = urllib3.PoolManager(**pool_kw)
    # Instance attribute: never mutate urllib3's module-level mapping.
    manager.pool_classes_by_scheme = {
        "http": GuardedHTTPConnectionPool,
        "https": GuardedHTTPSConnectionPool,
    }
    return manager


# --------------------------------------------------------------------------
# Guarded fetch: one attempt, redirects followed and checked hop by hop.

# A whole response must arrive within this many timeout_s: the read timeout
# alone does not stop a server that drips one byte per second.
TOTAL_TIMEOUT_FACTOR = 6
_CHUNK = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_RETRY_STATUSES = frozenset({408, 425, 429})
_HEADERS = {
    "User-Agent": "tuner-dataset-downloader/1.0",
    "Accept": "image/*",
    "Accept-Encoding": "identity",
}


class FetchError(Exception):
    """A failed attempt; ``reason`` is a stable token such as ``"timeout"``.

    Reasons: ``blocked``, ``dns_error``, ``connection_error``, ``timeout``,
    ``truncated``, ``too_large``, ``redirect_error``, ``http_<status>``,
    ``tls_error``, ``bad_url`` (the downloader adds image reasons).
    ``retryable`` says whether another attempt may succeed.
    """

    def __init__(self, reason: str, detail: str = "", *, retryable: bool = False) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retryable = retryable


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for :class:`GuardedFetcher` (see ``download_images`` for meanings)."""

    timeout_s: float = 10.0
    max_bytes: int = 30 * 2**20
    max_redirects: int = 5
    allow_loopback: bool = False
    allow_private: bool = False


class GuardedFetcher:
    """Thread-safe GET of whole bodies through a guarded connection pool."""

    def __init__(self, policy: FetchPolicy, *, maxsize: int = 8) -> None:
        self.policy = policy
        self._http = guarded_pool_manager(
            allow_loopback=policy.allow_loopback,
            allow_private=policy.allow_private,
            num_pools=max(10, maxsize),
            maxsize=maxsize,
            block=False,
            retries=False,
        )

    def __enter__(self) -> GuardedFetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._http.clear()

    def get(self, url: str) -> bytes:
        """One attempt at ``url``; returns the body or raises :class:`FetchError`."""
        policy = self.policy
        deadline = time.monotonic() + policy.timeout_s * TOTAL_TIMEOUT_FACTOR
        current = url
        for _hop in range(policy.max_redirects + 1):
            self._check(current)
            resp = self._request(current)
            released = False
            try:
                if resp.status in _REDIRECT_STATUSES:
                    location = resp.headers.get("Location")
                    if not location:
                        raise FetchError("redirect_error", f"HTTP {resp.status} without Location")
                    current = urljoin(current, location.strip())
                    continue
                if resp.status != 200:
                    retry = resp.status >= 500 or resp.status in _RETRY_STATUSES
                    raise FetchError(f"http_{resp.status}", f"HTTP {resp.status}", retryable=retry)
                data = self._read_body(resp, deadline)
                resp.release_conn()  # body fully read: keep-alive connection reusable
                released = True
                return data
            finally:
                if not released:
                    # Drop the connection rather than drain an unread body of
                    # unknown size (redirect, error page, aborted download).
                    resp.close()
        raise FetchError("redirect_error", f"more than {policy.max_redirects} redirects")

    def _check(self, url: str) -> None:
        try:
            check_url(
                url,
                allow_loopback=self.policy.allow_loopback,
                allow_private=self.policy.allow_private,
            )
        except BlockedURL as exc:
            raise FetchError("blocked", f"{url}: {exc}") from exc
        except socket.gaierror as exc:
            # EAI_AGAIN is a temporary resolver failure; NXDOMAIN and co. are final.
            retry = exc.errno == socket.EAI_AGAIN
            host = urlsplit(url).hostname
            raise FetchError("dns_error", f"{host}: {exc}", retryable=retry) from exc
        except (OSError, UnicodeError) as exc:
            raise FetchError("dns_error", f"{url}: {exc}") from exc

    def _request(self, url: str) -> urllib3.BaseHTTPResponse:
        timeout = self.policy.timeout_s
        try:
            return self._http.request(
                "GET",
                url,
                headers=_HEADERS,
                redirect=False,
                retries=False,
                preload_content=False,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
            )
        except BlockedURL as exc:  # the peer check of guarded_pool_manager
            raise FetchError("blocked", str(exc)) from exc
        except Exception as exc:
            raise _network_failure(exc) from exc

    def _read_body(self, resp: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        max_bytes = self.policy.max_bytes
        length = resp.headers.get("Content-Length", "").strip()
        if length.isdigit() and int(length) > max_bytes:
            raise FetchError("too_large", f"Content-Length {int(length)} > max_bytes {max_bytes}")
        buf = bytearray()
        try:
            # read1 returns what has arrived, so the deadline is checked often.
            while chunk := resp.read1(_CHUNK):
                buf += chunk
                if len(buf) > max_bytes:
                    raise FetchError("too_large", f"body exceeds max_bytes {max_bytes}")
                if time.monotonic() > deadline:
                    limit = self.policy.timeout_s * TOTAL_TIMEOUT_FACTOR
                    raise FetchError("timeout", f"response slower than {limit:g}s", retryable=True)
        except FetchError:
            raise
        except Exception as exc:
            raise _network_failure(exc) from exc
        return bytes(buf)


def _network_failure(exc: BaseException) -> FetchError:
    """Map a urllib3/socket exception to a reason (subclasses are tested first)."""
    if isinstance(exc, u3exc.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, u3exc.NameResolutionError):
        return FetchError("dns_error", text, retryable=True)
    # NewConnectionError subclasses ConnectTimeoutError: test it first.
    if isinstance(exc, u3exc.NewConnectionError):
        return FetchError("connection_error", text, retryable=True)
    if isinstance(exc, (u3exc.TimeoutError, TimeoutError)):
        return FetchError("timeout", text, retryable=True)
    if isinstance(exc, u3exc.ProtocolError):
        if any(isinstance(arg, http.client.IncompleteRead) for arg in exc.args):
            return FetchError("truncated", text, retryable=True)
        return FetchError("connection_error", text, retryable=True)
    if isinstance(exc, u3exc.SSLError):
        return FetchError("tls_error", text)
    if isinstance(exc, ValueError):  # includes urllib3's LocationValueError
        return FetchError("bad_url", text)
    if isinstance(exc, (u3exc.HTTPError, OSError)):
        return FetchError("connection_error", text, retryable=True)
    return FetchError("internal_error", text)
