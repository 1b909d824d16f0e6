"""Fixtures for the dataset tests: loopback HTTP server, competition fixture,
and a socket audit recorder that proves some addresses are never contacted."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from .loopback_server import LoopbackServer
except ImportError:  # collected without package context (rootdir-less import mode)
    sys.path.insert(0, str(Path(__file__).parent))
    from loopback_server import LoopbackServer  # type: ignore[no-redef]

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
VALIDATION_JSON = FIXTURES / "imaterialist" / "validation.json"


@pytest.fixture(scope="session")
def validation_json() -> Path:
    """The committed copy of the competition's validation.json (real data)."""
    assert VALIDATION_JSON.is_file(), f"missing fixture {VALIDATION_JSON}"
    return VALIDATION_JSON


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    """A fresh loopback server (empty routes, zero hits) per test."""
    server = LoopbackServer().start()
    try:
        yield server
    finally:
        server.stop()


class SocketRecorder:
    """Records socket.connect / getaddrinfo audit events while active."""

    def __init__(self) -> None:
        self.active = False
        self.connects: list[Any] = []
        self.lookups: list[Any] = []
        self._lock = threading.Lock()

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "socket.connect":
            with self._lock:
                self.connects.append(args[1])
        elif event == "socket.getaddrinfo":
            with self._lock:
                self.lookups.append(args[0])

    def contacted_hosts(self) -> set[str]:
        return {str(a[0]) for a in self.connects if isinstance(a, tuple)}


_RECORDER = SocketRecorder()
# Audit hooks cannot be removed; one process-wide hook that is a no-op
# unless a test activates it.
sys.addaudithook(_RECORDER)


@pytest.fixture
def socket_recorder() -> Iterator[SocketRecorder]:
    _RECORDER.connects.clear()
    _RECORDER.lookups.clear()
    _RECORDER.active = True
    try:
        yield _RECORDER
    finally:
        _RECORDER.active = False
