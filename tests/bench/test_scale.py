"""bench/scale.py end to end on a handful of trials: the real driver, Ray, MLflow and the CLI, and
the numbers it saves are consistent with each other."""

from __future__ import annotations

import json

import pytest

from bench.scale import main

pytestmark = pytest.mark.slow


def test_a_small_scale_run_saves_consistent_numbers(tmp_path):
    out = tmp_path / "scale.json"
    assert main(["--trials", "6", "--slots", "2", "--trial-seconds", "0.4", "--epochs", "2",
                 "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["command"].startswith("python bench/scale.py --trials 6")
    assert saved["trials"] == 6 and saved["trials_errored"] == 0
    assert saved["theoretical_wall_s"] == pytest.approx(6 * 0.4 / 2)
    assert saved["wall_s"] >= saved["theoretical_wall_s"]
    assert saved["wall_over_theoretical"] == pytest.approx(saved["wall_s"] / saved["theoretical_wall_s"], rel=0.01)
    assert saved["suggest"]["calls"] == len(saved["suggest"]["per_call_s"]) >= 6
    assert 0 < saved["driver_cpu_s_per_trial"] * 6 <= saved["driver_cpu_s_total"]
    assert saved["leaderboard_cli_ok"] and saved["leaderboard_cli_s"] > 0 and saved["mlflow_runs_query_s"] > 0
    assert saved["leaderboard_csv_all_cli_s"] > 0 and 0 < saved["mlflow_import_s"] < saved["leaderboard_cli_s"]
