"""Fixtures of the security tests: the loopback HTTP server and socket audit of the dataset tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# One process-wide audit hook (inactive unless a test turns it on) lives in the dataset tests'
# conftest; reusing its recorder keeps it that way.
from tests.tuner.datasets.conftest import _RECORDER, SocketRecorder
from tests.tuner.datasets.loopback_server import LoopbackServer


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    """A fresh HTTP server on 127.0.0.1 (empty routes, zero hits) per test."""
    server = LoopbackServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sockets() -> Iterator[SocketRecorder]:
    """Records every socket.connect / getaddrinfo of the test (proves what was never contacted)."""
    _RECORDER.connects.clear()
    _RECORDER.lookups.clear()
    _RECORDER.active = True
    try:
        yield _RECORDER
    finally:
        _RECORDER.active = False
