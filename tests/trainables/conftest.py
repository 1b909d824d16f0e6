"""Fixtures of the trainables tests: a tiny real-image tree cut from the shipped sample, tiny configs."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from trainables.config import TrialConfig
from tuner.datasets.demo import PACKED_SAMPLE

CLASSES = 10
TRAIN_PER_CLASS, VAL_PER_CLASS = 8, 4


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """train/<class>/ 8 and val/<class>/ 4 real CIFAR-10 JPEGs per class, cut from the shipped
    sample (without unpacking all 5,000), and a stats.json beside them."""
    root = tmp_path_factory.mktemp("tiny-data")
    with resources.as_file(resources.files("tuner.datasets") / PACKED_SAMPLE) as packed:
        table = pq.read_table(packed, columns=["split", "label", "name", "jpeg"]).to_pydict()
    wanted = {"train": TRAIN_PER_CLASS, "val": VAL_PER_CLASS}
    written: dict[tuple[str, str], int] = {}
    for split, label, name, data in zip(table["split"], table["label"], table["name"], table["jpeg"]):
        if split in wanted and written.get((split, label), 0) < wanted[split]:
            target = root / split / label / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written[(split, label)] = written.get((split, label), 0) + 1
    assert len({label for _, label in written}) == CLASSES
    # CIFAR-10's channel statistics, as `tuner data stats` writes them.
    (root / "stats.json").write_text(json.dumps({"mean": [0.491, 0.482, 0.447],
                                                 "std": [0.247, 0.243, 0.261]}))
    return root


def tiny_config(data: Path, **overrides) -> TrialConfig:
    """A config that trains in well under a second per epoch on one CPU core."""
    values = dict(train_dir=str(data / "train"), val_dir=str(data / "val"), arch="resnet18",
                  width=0.125, image_size=32, batch_size=16, lr=0.05, epochs=2, device="cpu")
    values.update(overrides)
    return TrialConfig.from_dict(values)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread for every trainables test: faster on a shared 2-core machine than two
    contending ones, and the same thread count everywhere (float sums depend on it, which the
    exact-resume comparison would see)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
