"""The cluster check's probe on a node whose worker dies once: the check runs it again instead of
refusing the search (one in-process local Ray; the multi-node cases are in test_preflight.py)."""

from __future__ import annotations

import pytest
import ray

from tuner.cluster import preflight as cluster
from tuner.cluster.connect import start_ray
from tuner.errors import UserError


@pytest.fixture
def local_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    start_ray(None)
    yield [cluster.NodeShape(label="this node", resources={"CPU": 1}, running=True,
                             node_id=ray.get_runtime_context().get_node_id())]
    ray.shutdown()


def _probe_whose_worker_dies(marker: str, times: int):
    real = cluster._node_probe()

    def factory():
        def probe(module, storage_path, data_dirs):
            import os  # runs on a Ray worker by value

            deaths = len(open(marker).read()) if os.path.exists(marker) else 0
            if deaths < times:
                with open(marker, "a") as handle:
                    handle.write("x")
                os._exit(1)  # the worker dies, as one the OOM killer ends would
            return real(module, storage_path, data_dirs)
        return probe
    return factory


def test_a_probe_whose_worker_died_once_runs_again(local_ray, tmp_path, monkeypatch):
    marker = tmp_path / "deaths"
    monkeypatch.setattr(cluster, "_node_probe", _probe_whose_worker_dies(str(marker), 1))
    (tmp_path / "runs").mkdir()
    cluster.check_nodes(local_ray, storage_path=str(tmp_path / "runs"), data_dirs=[str(tmp_path)])
    assert marker.read_text() == "x"  # it died once, and the second run answered


def test_a_worker_that_keeps_dying_is_named_after_the_retries(local_ray, tmp_path, monkeypatch):
    marker = tmp_path / "deaths"
    monkeypatch.setattr(cluster, "_node_probe", _probe_whose_worker_dies(str(marker), 99))
    with pytest.raises(UserError, match="this node: the probe task failed"):
        cluster.check_nodes(local_ray, storage_path=str(tmp_path / "runs"), data_dirs=[str(tmp_path)])
    assert len(marker.read_text()) == 1 + cluster.PROBE_RETRIES
