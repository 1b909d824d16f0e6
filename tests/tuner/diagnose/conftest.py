"""Fixtures of the diagnostics' tests: small trial configs on the shipped sample, a shuffled copy."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
import yaml

TINY = {"arch": "resnet18", "width": 0.125, "image_size": 32, "batch_size": 32, "optimizer": "sgd",
        "lr": 0.05, "augmentation": "light", "num_workers": 0, "device": "cpu"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a busy 2-core machine: one intra-op thread is several times faster than two
    threads fighting other processes for the cores (and keeps timings steady)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def write_config(tmp_path, demo_data):
    """write_config(**settings) -> a trial-config YAML on the shipped sample (tiny resnet18)."""

    def write(name: str = "trial.yaml", train_dir=None, **settings) -> Path:
        values = {"train_dir": str(train_dir or demo_data / "train"), "val_dir": str(demo_data / "val"),
                  **TINY, **settings}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(values))
        return path

    return write


@pytest.fixture(scope="session")
def shuffled_train(demo_data, tmp_path_factory) -> Path:
    """The sample's training images, each linked into the folder of a randomly chosen class."""
    root = tmp_path_factory.mktemp("shuffled") / "train"
    files = sorted((demo_data / "train").glob("*/*.jpg"))
    labels = [f.parent.name for f in files]
    random.Random(0).shuffle(labels)
    for image, label in zip(files, labels):
        (root / label).mkdir(parents=True, exist_ok=True)
        os.symlink(image, root / label / image.name)
    return root


@pytest.fixture
def demo_spec(tmp_path, demo_data) -> Path:
    """The shipped search_spaces/demo.yaml, its data pointed at the unpacked sample."""
    text = (Path(__file__).parents[3] / "search_spaces" / "demo.yaml").read_text()
    path = tmp_path / "demo.yaml"
    path.write_text(text.replace("data/demo/", f"{demo_data}/"))
    return path
