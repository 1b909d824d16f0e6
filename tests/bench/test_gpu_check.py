"""bench/gpu_check.sh --device cpu: the script a GPU machine runs, end to end on tiny CPU settings
(the repository's real photos): ONE JSON with the card and software, and numbers from every stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_cpu_run_writes_one_json_with_numbers_from_every_stage(tmp_path):
    out = tmp_path / "out" / "gpu_check.json"
    out.parent.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--device", "cpu", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    # Saved results name no folder of the machine they ran on (the stages' work folder is in TMPDIR).
    for saved in [out, *out.parent.glob("*.log")]:
        assert str(tmp_path) not in saved.read_text(), saved.name
    assert sorted(p.name for p in out.parent.glob("*.log")) == [
        f"gpu_check_{stage}.log" for stage in ("decode", "engine", "engine_r50", "loader", "packing")]
    assert {"card", "software", "machine", "stages", "summary", "how", "total_seconds"} <= set(report)
    assert report["card"]["name"] is None and "no GPU" in report["card"]["why"]
    assert {"torch", "torchvision", "cuda", "python"} <= set(report["software"])
    stages = report["stages"]
    assert {name: s["status"] for name, s in stages.items()} == dict.fromkeys(
        ("decode", "engine", "engine_r50", "packing", "loader"), "ok"), {n: s.get("log_tail") for n, s in stages.items()}
    assert all(0 < s["seconds"] <= s["cap_seconds"] for s in stages.values())

    decode = stages["decode"]["result"]
    assert decode["photos"]["kind"] == "real" and decode["photos"]["mean_width"] > 150
    for row in [*decode["rows"].values(), decode["cache_build_cpu"], decode["cache_build_device"]]:
        assert row["images_per_s"] > 0 and row["how"]
    assert decode["cache_equal"]["within_tolerance"] and decode["cache_equal_small"]["within_tolerance"]

    engine = stages["engine"]["result"]
    assert engine["source"] == "cache" and engine["data"]["cache"]["images"] >= 128
    assert engine["probe"]["max_batch_size"] >= 1 and engine["gpu_busy_how"]
    # The card fields the GPU-share check reads: none without a card, in the probe and the summary.
    assert engine["probe"]["device_total_bytes"] is None and engine["probe"]["context_bytes"] is None
    assert report["summary"]["probe_memory"]["max_batch_size"] == engine["probe"]["max_batch_size"]
    assert len(engine["rows"]) >= 1
    for row in engine["rows"]:
        assert row["engine_images_per_s"] > 0 and row["plain_images_per_s"] > 0 and row["ratio"] > 0
        assert row["gpu_busy_error"] == "no GPU"

    packing = stages["packing"]["result"]
    assert [e["processes"] for e in packing["entries"]] == [1, 2]
    for entry in packing["entries"]:
        assert entry["aggregate_images_per_s"] > 0 and len(entry["per_process"]) == entry["processes"]
    assert report["summary"]["packing_aggregate_vs_one_process"]

    r50 = stages["engine_r50"]["result"]
    assert r50["rows"] and {row["arch"] for row in r50["rows"]} == {"resnet50"}
    assert {row["arch"] for row in report["summary"]["engine_rows"]} == {"resnet18", "resnet50"}

    loader = stages["loader"]["result"]
    assert set(loader["per_image_ms"]) == {"none", "light", "rrc", "journal"}
    assert all(ms > 0 for ms in loader["per_image_ms"].values())
    assert set(loader["finish_ms"]) == set(loader["per_image_ms"]) and all(ms > 0 for ms in loader["finish_ms"].values())
    assert report["summary"]["loader_ceiling"]["finish_ms"] == loader["finish_ms"]
    crops = loader["batched_crops"]  # roi_align's batch crops land near torchvision's per-sample ones
    assert crops["cpu_per_image_ms"] > 0 and crops["device_batch_ms"] > 0
    assert crops["difference_grey_levels"]["mean"] < 1.5 and crops["difference_grey_levels"]["p99"] <= 8
    assert report["summary"]["loader_ceiling"]["batched_crops"] == crops
    assert [row["workers"] for row in loader["rows"]] == [0]
    assert all(row["loader"] > 0 and row["to_device"] > 0 for row in loader["rows"])
    assert report["summary"]["loader_ceiling"]["rows"] == loader["rows"]
