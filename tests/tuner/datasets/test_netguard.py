"""SSRF guard: address policy, URL checks and the connection-level peer check."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tuner.datasets.fetch import FetchError, FetchPolicy, GuardedFetcher
from tuner.datasets.netguard import (
    BlockedURL,
    address_problem,
    check_url,
    guarded_pool_manager,
)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/x.jpg", "loopback"),
        ("http://127.9.9.9:8080/", "loopback"),
        ("http://[::1]/x", "loopback"),
        ("http://2130706433/x", "loopback"),  # 127.0.0.1 as one decimal number
        ("http://0x7f.1/x", "loopback"),  # inet_aton short hex form
        ("http://localhost/x", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/latest/", "metadata"),
        ("http://10.0.0.1/x", "private"),
        ("http://172.16.5.4/x", "private"),
        ("http://192.168.1.1/x", "private"),
        ("http://100.64.0.1/x", "private"),
        ("http://[fc00::1]/x", "private"),
        ("http://169.254.1.1/x", "link-local"),
        ("http://[fe80::1]/x", "link-local"),
        ("http://0.0.0.0/x", "unspecified"),
        ("http://224.0.0.1/x", "multicast"),
        ("http://240.0.0.1/x", "reserved"),
        ("http://[::ffff:10.0.0.1]/x", "private"),  # IPv4-mapped IPv6
        ("http://[::ffff:169.254.169.254]/x", "metadata"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("ftp://93.184.216.34/x", "scheme 'ftp'"),
        ("gopher://93.184.216.34/x", "scheme 'gopher'"),
        ("/relative/path", r"scheme '\(none\)'"),
        ("http:///nohost", "no host"),
        ("http://93.184.216.34:notaport/", "malformed"),
    ],
)
def test_refused_by_default(url: str, why: str) -> None:
    with pytest.raises(BlockedURL, match=why):
        check_url(url)


def test_loopback_only_when_allowed() -> None:
    assert check_url("http://127.0.0.1:9/x", allow_loopback=True) == ["127.0.0.1"]
    with pytest.raises(BlockedURL, match="private"):
        check_url("http://10.0.0.1/x", allow_loopback=True)


def test_private_only_when_allowed() -> None:
    assert check_url("http://10.0.0.1/x", allow_private=True) == ["10.0.0.1"]
    with pytest.raises(BlockedURL, match="loopback"):
        check_url("http://127.0.0.1/x", allow_private=True)


@pytest.mark.parametrize(
    "address", ["169.254.169.254", "fd00:ec2::254", "169.254.0.1", "0.0.0.0", "ff02::1"]
)
def test_never_allowed(address: str) -> None:
    assert address_problem(address, allow_loopback=True, allow_private=True) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(address) is None


def test_every_resolved_address_must_pass() -> None:
    """A name resolving to one public and one private address is refused."""

    def resolver(host: str, port: int, **_: Any) -> list[Any]:
        assert (host, port) == ("mixed.example", 443)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port)),
        ]

    with pytest.raises(BlockedURL, match=r"mixed.example -> 10.1.2.3: 10.1.2.3 is a private"):
        check_url("https://mixed.example/x", resolver=resolver)


def test_unresolvable_name_is_an_oserror_not_a_policy_refusal() -> None:
    with pytest.raises(OSError):
        check_url("http://does-not-exist.invalid/x")


def test_peer_check_refuses_connection_even_without_check_url(loopback: Any) -> None:
    """The pool manager re-checks the connected peer (DNS-rebinding defence)."""
    http = guarded_pool_manager(retries=False)
    with pytest.raises(BlockedURL, match=r"127\.0\.0\.1 is a loopback address"):
        http.request("GET", f"{loopback.base_url}/x", redirect=False)
    assert sum(loopback.hits.values()) == 0  # no request byte reached the server
    allowed = guarded_pool_manager(allow_loopback=True, retries=False)
    assert allowed.request("GET", f"{loopback.base_url}/x", redirect=False).status == 404


def test_fetcher_refuses_loopback_unless_allowed(loopback: Any) -> None:
    with GuardedFetcher(FetchPolicy()) as fetcher, pytest.raises(FetchError) as err:
        fetcher.get(f"{loopback.base_url}/x")
    assert err.value.reason == "blocked" and not err.value.retryable
    assert sum(loopback.hits.values()) == 0
