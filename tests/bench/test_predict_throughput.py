"""bench/predict_throughput.py end to end on tiny settings: its JSON holds the rows the issue asks for,
consistent with each other, and every path wrote a submission with one row per image."""

from __future__ import annotations

import csv
import json

import pytest

from bench.predict_throughput import main

IMAGES = 6


def test_tiny_run_saves_consistent_rows_and_real_submissions(demo_data, tmp_path):
    out, csvs = tmp_path / "result.json", tmp_path / "csv"
    argv = ["--images", str(IMAGES), "--batch-size", "4", "--width", "0.125", "--image-size", "64",
            "--threads", "1", "--sample", str(demo_data), "--csv-dir", str(csvs), "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())

    assert result["command"].startswith("python bench/predict_throughput.py --images 6 ")
    rows = result["rows"]
    assert [(r["models"], r["tta"], r["views"]) for r in rows] == [(1, "none", 1), (5, "twelve", 12)]
    naive = result["naive_row"]
    assert (naive["models"], naive["tta"], naive["views"]) == (5, "twelve", 12)
    assert naive["decodes_per_image"] == 60
    for row in [*rows, naive]:
        assert set(row) >= {"models", "tta", "views", "images", "seconds", "images_per_s", "peak_rss_mib"}
        assert row["images"] == IMAGES and row["seconds"] > 0 and row["peak_rss_mib"] > 0
        assert row["images_per_s"] == pytest.approx(row["images"] / row["seconds"], rel=0.01)
    assert rows[0]["decodes_per_image"] == rows[1]["decodes_per_image"] == 1
    assert result["one_model_one_view_img_s"] == rows[0]["images_per_s"]
    assert result["five_models_twelve_views_img_s"] == rows[1]["images_per_s"]
    assert result["naive_five_models_twelve_views_img_s"] == naive["images_per_s"]
    assert result["speedup_vs_naive"] == pytest.approx(naive["seconds"] / rows[1]["seconds"], rel=0.02)
    # The same math in other batch shapes: random-init models, yet (nearly) the same answers.
    assert result["naive_same_class_share"] >= 0.8
    assert result["machine"]["torch_threads"] == 1 and result["photos"]["count"] == IMAGES
    assert "random init" in result["models"]["weights"]

    expected_ids = [str(i) for i in range(1, IMAGES + 1)]  # the sample's test ids, numeric order
    names = ("one_model_one_view", "five_models_twelve_views", "naive_five_models_twelve_views")
    for name in names:
        with open(csvs / f"{name}.csv", newline="") as handle:
            written = list(csv.DictReader(handle))
        assert [row["id"] for row in written] == expected_ids, name
        assert all(row["predicted"] for row in written)
    assert set(result["csv_rows"].values()) == {IMAGES}
