"""Shared fixtures: the shipped sample data, unpacked once per test session."""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture(scope="session")
def quick_data(demo_data, tmp_path_factory) -> Path:
    """The shipped sample with a 200-image validation set (20 per class): every epoch evaluates the
    whole of it, and the searches that use this are about what is recorded and where trials run,
    not how well they learn. Train, test, the answer key and stats.json are the sample's own."""
    root = tmp_path_factory.mktemp("quick-data")
    shutil.copytree(demo_data, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("val"))
    for class_dir in sorted((demo_data / "val").iterdir()):
        (root / "val" / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:20]:
            shutil.copy(image, root / "val" / class_dir.name / image.name)
    return root
