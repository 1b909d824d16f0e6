"""One local multi-node Ray cluster for the tests of this package (see local_cluster.py)."""

from __future__ import annotations

import shutil
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
def cluster_data(demo_data, tmp_path_factory) -> Path:
    """The shipped sample with a 200-image validation set: every epoch evaluates it, and these
    tests are about where trials run, not how well they learn."""
    root = tmp_path_factory.mktemp("cluster-data")
    shutil.copytree(demo_data / "train", root / "train")
    for class_dir in sorted((demo_data / "val").iterdir()):
        (root / "val" / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:20]:
            shutil.copy(image, root / "val" / class_dir.name / image.name)
    if (demo_data / "stats.json").exists():
        shutil.copy(demo_data / "stats.json", root / "stats.json")
    return root
