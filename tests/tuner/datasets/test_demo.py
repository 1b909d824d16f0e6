"""``tuner data demo --out DIR`` through the real CLI: the shipped sample laid out like the
competition (README): ``train/<class>/`` and ``val/<class>/`` ImageFolders, ``test/<id>.jpg``
unlabelled, the answer key ``test_labels.csv`` and the channel statistics ``stats.json``."""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from tuner.cli import main

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def packed_sample() -> dict[tuple[str, str], tuple[str, bytes]]:
    """The shipped Parquet read directly: {(split, file name): (label, JPEG bytes)}."""
    with resources.as_file(resources.files("tuner.datasets") / "cifar10_sample.parquet") as packed:
        table = pq.read_table(packed).to_pydict()
    return {(s, n): (label, data)
            for s, label, n, data in zip(table["split"], table["label"], table["name"], table["jpeg"])}


def test_demo_lays_out_the_sample_like_the_competition(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["data", "demo", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"sample data in {out}: 3000 train, 1000 val, 1000 test images, answer key test_labels.csv")
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "test", "test_labels.csv", "train", "val"]

    sample = packed_sample()
    for split, per_class in (("train", 300), ("val", 100)):
        assert sorted(p.name for p in (out / split).iterdir()) == CLASSES
        for label in CLASSES:
            files = sorted((out / split / label).iterdir())
            assert len(files) == per_class, (split, label)
            for path in files[:5]:  # the right photo under the right class, byte for byte
                assert sample[(split, path.name)] == (label, path.read_bytes())

    # Unlabelled test images named by id 1..1000, and an answer key for exactly those ids.
    test_files = sorted((out / "test").iterdir(), key=lambda p: int(p.stem))
    assert [p.name for p in test_files] == [f"{i}.jpg" for i in range(1, 1001)]
    with open(out / "test_labels.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "label"]
    key = {int(i): label for i, label in rows[1:]}
    assert list(key) == list(range(1, 1001))  # one row per id, in id order
    for path in test_files:
        assert sample[("test", path.name)] == (key[int(path.stem)], path.read_bytes())
    assert sorted(key.values()) == sorted(CLASSES * 100)

    # stats.json: mean and population std per channel of the 3,000 training images, in [0, 1].
    pixels = np.concatenate([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).reshape(-1, 3)
                             for p in sorted((out / "train").rglob("*.jpg"))]) / 255.0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["count"] == 3000
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=0), atol=1e-4)


def test_answer_key_part_symlink_is_not_written_through(tmp_path):
    from tuner.datasets.demo import unpack_demo_data

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "demo"
    out.mkdir()
    (out / "test_labels.part").symlink_to(victim)
    unpack_demo_data(out)
    assert victim.read_text() == "precious\n"
    assert not (out / "test_labels.csv").is_symlink()
