"""Shared fixtures: the shipped sample data, unpacked once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tuner.datasets.demo import unpack_demo_data

REQUIRE_SERVICES = os.environ.get("TUNER_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    """Skips on a user's machine that lacks a service; CI sets TUNER_REQUIRE_SERVICES=1 to fail."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def warm_torch() -> None:
    """Import torch and torchvision once up front: on a fresh checkout their gigabytes of libraries
    come off a cold disk, and the first tests (multi-node Ray trials with deadlines) should not pay."""
    import torch  # noqa: F401
    import torchvision  # noqa: F401


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo-data")
    unpack_demo_data(root)
    return root
