"""Good and bad inputs mixed in one run: the good ones all arrive, every bad one is counted once.

A download from the loopback server and a one-epoch training on real CIFAR photos with unreadable
files planted among them.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from tests.tuner.datasets.loopback_server import Behaviour, bomb_png, jpeg
from trainables.config import TrialConfig
from trainables.runner import run_trial
from tuner.datasets.competition import load_competition_json
from tuner.datasets.download import FAILURES_CSV, download_images, item_path

FAST = {"workers": 4, "timeout_s": 2.0, "retries": 1, "backoff_s": 0.01, "max_bytes": 200_000}
HOST = "http://img.example.com"  # never contacted: every URL is rewritten to the loopback server


def test_download_mixes_good_and_bad_items(loopback: Any, tmp_path: Path, sockets: Any) -> None:
    good = {image_id: f"/good/{image_id}.jpg" for image_id in range(1, 6)}
    for image_id, path in good.items():
        loopback.routes[path] = Behaviour(body=jpeg(40 + image_id, 30, image_id))
    bad = {  # image id -> (route, behaviour, reason in download_failures.csv)
        11: ("/gone.jpg", Behaviour(status=404, body=b"gone", content_type="text/html"), "http_404"),
        12: ("/page.jpg", Behaviour(body=b"<html><body>Image removed</body></html>"), "not_an_image"),
        13: ("/cut.jpg", Behaviour(kind="truncated", body=jpeg(64, 64, 6)[:400]), "truncated"),
        14: ("/half.jpg", Behaviour(body=jpeg(120, 90, 7)[:900]), "truncated"),
        15: ("/bomb.png", Behaviour(body=bomb_png(20_000), content_type="image/png"), "decompression_bomb"),
        16: ("/meta.jpg", Behaviour(kind="redirect", status=302,
                                    location="http://169.254.169.254/latest/meta-data/"), "blocked"),
        17: ("/empty.jpg", Behaviour(body=b""), "not_an_image"),
    }
    for route, behaviour, _ in bad.values():
        loopback.routes[route] = behaviour
    images = [{"image_id": i, "url": [HOST + p]} for i, p in good.items()]
    images += [{"image_id": i, "url": [HOST + route]} for i, (route, _, _) in bad.items()]
    images += [{"image_id": 21, "url": ["file:///etc/passwd"]}, {"image_id": 22, "url": []}]
    annotations = [{"image_id": e["image_id"], "label_id": e["image_id"] % 3} for e in images]
    source = tmp_path / "train.json"
    source.write_text(json.dumps({"images": images, "annotations": annotations}))

    index = load_competition_json(source)
    assert sorted(image_id for image_id, _ in index.skipped) == [21, 22]  # skipped in the JSON
    out = tmp_path / "train"
    summary = download_images(index, out_dir=out, rewrite_host=loopback.base_url,
                              allow_loopback=True, progress=False, **FAST)

    assert summary.downloaded == len(good) and summary.skipped_in_json == 2
    assert summary.requested == summary.downloaded + summary.failed_total == len(good) + len(bad)
    with open(out / FAILURES_CSV, newline="", encoding="utf-8") as handle:
        rows = {int(row["image_id"]): row for row in csv.DictReader(handle)}
    assert {i: row["reason"] for i, row in rows.items()} == {i: b[2] for i, b in bad.items()}
    assert all(row["url"].startswith(HOST) and row["detail"] for row in rows.values())
    assert "metadata" in rows[16]["detail"]
    for item in index.items:
        on_disk = item_path(out, item).is_file()
        assert on_disk == (item.image_id in good), item
        if on_disk:
            with Image.open(item_path(out, item)) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (40 + item.image_id, 30))
    assert not list(out.rglob("*.part"))
    assert sockets.contacted_hosts() == {"127.0.0.1"}  # no real host, no metadata endpoint
    assert not {"img.example.com", "169.254.169.254"} & set(sockets.lookups)


def _tree(demo_data: Path, root: Path, split: str, per_class: int, classes: list[str]) -> Path:
    for name in classes:
        target = root / split / name
        target.mkdir(parents=True)
        for path in sorted((demo_data / split / name).glob("*.jpg"))[:per_class]:
            shutil.copy(path, target / path.name)
    return root / split


def test_training_skips_and_counts_unreadable_files(demo_data: Path, tmp_path: Path) -> None:
    classes = sorted(p.name for p in (demo_data / "train").iterdir() if p.is_dir())[:3]
    train = _tree(demo_data, tmp_path, "train", 60, classes)
    val = _tree(demo_data, tmp_path, "val", 20, classes)
    planted = {
        "cut.jpg": jpeg(64, 64, 1)[:600],
        "empty.jpg": b"",
        "page.jpg": b"<html><body>Image removed</body></html>",
        "bomb.png": bomb_png(20_000),
    }
    for i, (name, data) in enumerate(planted.items()):
        (train / classes[i % 3] / name).write_bytes(data)

    config = TrialConfig.from_dict({
        "train_dir": str(train), "val_dir": str(val), "image_size": 32, "arch": "resnet18",
        "width": 0.125, "epochs": 1, "batch_size": 32, "lr": 0.05, "num_workers": 0,
    })
    reports: list[dict] = []
    outcome = run_trial(config, report=lambda metrics, _checkpoint: reports.append(dict(metrics)))

    assert outcome.status == "completed" and len(reports) == 1
    metrics = reports[0]
    assert metrics["status"] == "completed" and metrics["final"] is True
    assert metrics["skipped_images"] == len(planted)
    assert math.isfinite(metrics["val_loss"]) and math.isfinite(metrics["train_loss"])
    assert 0.0 <= metrics["val_acc"] <= 1.0
