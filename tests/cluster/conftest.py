"""One local multi-node Ray cluster for the tests of this package (see local_cluster.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.local_cluster import LocalRayCluster

# Two worker nodes: one with 2 (logical) GPUs, one CPU-only. Ray does not enforce CPU counts.
NODES = {
    "gpu-node": {"num_cpus": 2, "num_gpus": 2},
    "cpu-node": {"num_cpus": 2},
}


@pytest.fixture(scope="package")
def ray_cluster():
    cluster = LocalRayCluster.create()
    try:
        cluster.start_head()
        for name, kwargs in NODES.items():
            cluster.add_node(name, **kwargs)
        cluster.wait_for_workers(len(NODES))
        yield cluster
    finally:
        cluster.stop()



@pytest.fixture(scope="package")
def cluster_data(quick_data) -> Path:
    """These tests are about where trials run, not how well they learn: the quick sample."""
    return quick_data
