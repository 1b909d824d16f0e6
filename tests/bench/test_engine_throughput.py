"""bench/engine_throughput.py keeps its CPU behaviour (the shipped sample in memory, engine vs plain
loop on one model) next to the trial-from-the-cache rows that gpu_check.sh runs (test_gpu_check)."""

from __future__ import annotations

import json

from bench.engine_throughput import main


def test_the_default_cpu_run_compares_the_engine_with_the_plain_loop(tmp_path):
    out = tmp_path / "engine.json"
    assert main(["--images", "64", "--batch", "32", "--repeats", "1", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["device_type"], report["threads"]) == ("cpu", 1) and "source" not in report
    [row] = report["rows"]
    assert (row["arch"], row["width"], row["image_size"], row["batch_size"]) == ("resnet18", 0.25, 32, 32)
    assert row["images_per_epoch"] == 64 and len(row["engine_all"]) == len(row["plain_all"]) == 1
    assert row["engine_images_per_s"] > 0 and row["plain_images_per_s"] > 0 and row["cpu_time_ratio"] > 0
