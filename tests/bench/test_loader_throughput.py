"""bench/loader_throughput.py end to end on tiny settings: real photos from the repository, the
trial's own data path per preset against ImageFolder + PIL, and the speedups the issue names."""

from __future__ import annotations

import json

import pytest

from bench.loader_throughput import main


def test_tiny_run_measures_the_trial_path_on_real_photos(tmp_path):
    out = tmp_path / "loader.json"
    argv = ["--photos", "real", "--images", "12", "--workers", "0", "--batch-size", "4",
            "--rounds", "1", "--seconds", "0", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["command"] == "python bench/loader_throughput.py " + " ".join(argv)
    assert result["photo_set"] == "real" and result["photos"]["count"] == 12
    assert result["photos"]["mean_width"] > 150  # real photos, not the 32 px sample
    rates = result["sets"]["real"]["images_per_s"]
    for preset in ("light", "journal"):
        for row in (f"files: ImageFolder + PIL, {preset}, float", f"trial: cache 224 px, {preset}, uint8 + finish",
                    f"before: cache 224 px, {preset}, float in workers"):
            assert rates[row] > 0
    speedup = result["speedup"]  # from the unrounded rates: within rounding of the saved ones
    assert speedup["trial"] == pytest.approx(rates["trial: cache 224 px, light, uint8 + finish"]
                                             / rates["files: ImageFolder + PIL, light, float"], rel=0.02)
    assert speedup["trial_journal"] == pytest.approx(rates["trial: cache 224 px, journal, uint8 + finish"]
                                                     / rates["files: ImageFolder + PIL, journal, float"], rel=0.02)
    assert result["goal_speedup"]["trial"] == 8.0 and result["goal_speedup"]["trial_journal"] == 4.0
