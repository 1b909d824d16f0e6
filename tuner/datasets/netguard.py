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
:class:`tuner.datasets.fetch.GuardedFetcher` combines both, follows redirects
itself (urllib3's automatic redirects would skip the per-hop check) and adds
the time and size limits of one fetch.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = [
    "BlockedURL",
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
    *,
    allow_loopback: bool = False,
    allow_private: bool = False,
    on_socket: Callable[[socket.socket], None] | None = None,
    **pool_kw: Any,
) -> urllib3.PoolManager:
    """A ``urllib3.PoolManager`` whose sockets refuse blocked peers.

    Each new connection checks ``getpeername()`` with
    :func:`address_problem` right after the TCP handshake and closes the
    socket (raising :class:`BlockedURL`) before TLS or any HTTP byte. Use it
    together with :func:`check_url` (which avoids even the handshake); it
    does not follow redirects by itself, callers pass ``redirect=False``.

    ``on_socket``, if given, is called in the requesting thread with the
    socket of every new connection (after the peer check, before TLS) and
    with the socket of every connection about to send a request (new or
    reused); the fetcher uses it to cut a connection off at its deadline.
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
        if on_socket is not None:
            on_socket(sock)
        return sock

    def request(self: HTTPConnection, base: type[HTTPConnection], *args: Any, **kw: Any) -> None:
        if on_socket is not None and self.sock is not None:  # None: connects inside
            on_socket(self.sock)
        base.request(self, *args, **kw)

    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self, HTTPConnection)

        def request(self, *args: Any, **kw: Any) -> None:  # type: ignore[override]
            request(self, HTTPConnection, *args, **kw)

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self, HTTPSConnection)

        def request(self, *args: Any, **kw: Any) -> None:  # type: ignore[override]
            request(self, HTTPSConnection, *args, **kw)

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
