"""The shipped sample: 5,000 real CIFAR-10 photos (32x32 JPEG) packed in one Parquet file.

``tuner data demo --out DIR`` lays them out like the competition:
``DIR/train/<class>/*.jpg`` (3,000), ``DIR/val/<class>/*.jpg`` (1,000), ``DIR/test/<id>.jpg`` (1,000
unlabelled, ids 1..1000), ``DIR/test_labels.csv`` (the answer key) and ``DIR/stats.json``.
"""

from __future__ import annotations

import csv
import os
from importlib import resources
from pathlib import Path

import pyarrow.parquet as pq

from tuner.datasets.safe_files import open_new
from tuner.datasets.stats import channel_stats, default_stats_path, save_stats
from tuner.errors import UserError

PACKED_SAMPLE = "cifar10_sample.parquet"
ANSWER_KEY = "test_labels.csv"


def unpack_demo_data(out: str | Path) -> dict[str, int]:
    """Writes the sample under ``out`` (idempotent: existing identical files are left alone)."""
    out = Path(out)
    with resources.as_file(resources.files("tuner.datasets") / PACKED_SAMPLE) as packed:
        table = pq.read_table(packed).to_pydict()
    counts = {"train": 0, "val": 0, "test": 0}
    answers: list[tuple[int, str]] = []
    try:
        for split, label, name, data in zip(table["split"], table["label"], table["name"], table["jpeg"]):
            if split == "test":
                target = out / "test" / name
                answers.append((int(Path(name).stem), label))
            else:
                target = out / split / label / name
            _write_if_changed(target, data)
            counts[split] += 1
        answers.sort()
        key = out / ANSWER_KEY
        with open_new(key.with_suffix(".part"), "w", newline="") as handle:  # never via a symlink
            writer = csv.writer(handle)
            writer.writerow(["id", "label"])
            writer.writerows(answers)
        os.replace(key.with_suffix(".part"), key)
        _write_stats(out)
    except OSError as err:
        raise UserError(f"{out}: cannot write the sample data ({err.strerror})") from None
    return counts


def _write_if_changed(target: Path, data: bytes) -> None:
    if target.is_file() and target.stat().st_size == len(data):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with open_new(partial, "wb") as handle:  # a planted symlink is replaced, not written through
        handle.write(data)
    os.replace(partial, target)


def _write_stats(out: Path) -> None:
    """Channel mean/std of the training images, at their native 32 px (3,000 images: one process)."""
    stats = channel_stats(out / "train", resize=None, workers=1, progress=False)
    save_stats(stats, default_stats_path(out / "train"))
