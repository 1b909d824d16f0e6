"""Shared fixtures: the shipped sample data, unpacked once per test session."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

import pytest

from tuner.datasets.demo import unpack_demo_data

REQUIRE_SERVICES = os.environ.get("TUNER_REQUIRE_SERVICES") == "1"

# Test files that share a session- or package-scoped fixture: their tests must run in one
# pytest-xdist worker, or each worker would build it again. tracking/: a real search against a real
# MLflow server; cluster/: a local multi-node Ray cluster (a head and two worker nodes).
SHARED_SESSION_FIXTURE_DIRS = ("tests/tuner/tracking/", "tests/cluster/")


def work_unit(nodeid: str) -> str:
    """What pytest-xdist hands to one worker as a whole: a test file (its module-scoped fixtures
    are built once), or a directory whose files share a session fixture."""
    path = nodeid.split("::")[0]
    return next((d for d in SHARED_SESSION_FIXTURE_DIRS if path.startswith(d)), path)


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: a bare `pytest` runs without xdist
def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs ``-n 3 --dist loadscope``: one work unit per ``work_unit``, handed out
    in collection order (no reordering by size), which ``pytest_collection_modifyitems`` makes
    the slow units first, so the long ones start at once instead of last."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling  # only under xdist

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False
    return ByWorkUnit(config, log)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: files stay whole


def skip_or_fail(reason: str) -> None:
    """Skips on a user's machine that lacks a service; CI sets TUNER_REQUIRE_SERVICES=1 to fail."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


PG_DSN = "postgresql://postgres@127.0.0.1:5432/{db}"  # the test PostgreSQL: trust auth, loopback


@contextlib.contextmanager
def fresh_postgres_database():
    """A new database on the test PostgreSQL, dropped afterwards; yields its DSN (no password:
    trust auth ignores one, so tests may add a dummy password to check it is never written)."""
    try:
        import psycopg2

        admin = psycopg2.connect(PG_DSN.format(db="postgres"), connect_timeout=3)
    except Exception as err:  # no server on this machine
        skip_or_fail(f"PostgreSQL at 127.0.0.1:5432 is not reachable ({err})")
    admin.autocommit = True
    name = f"tuner_test_{uuid.uuid4().hex[:10]}"
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield PG_DSN.format(db=name)
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(scope="session", autouse=True)
def warm_torch() -> None:
    """Import torch and torchvision once up front: on a fresh checkout their gigabytes of libraries
    come off a cold disk, and the first tests (multi-node Ray trials with deadlines) should not pay."""
    import torch  # noqa: F401
    import torchvision  # noqa: F401


@pytest.fixture(scope="session", autouse=True)
def search_state_key(tmp_path_factory) -> Path:
    """The drivers of this test session sign their Ray state with a key of their own, not the
    user's ~/.tuner/state.key (subprocesses inherit the variable)."""
    path = tmp_path_factory.mktemp("state-key") / "state.key"
    os.environ["TUNER_STATE_KEY"] = str(path)
    return path


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
