"""bench/scale.py end to end on a handful of trials: the real driver, Ray, MLflow and the CLI, and
the numbers it saves are consistent with each other."""

from __future__ import annotations

import json

import pytest

from bench.scale import main, package_import_seconds

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


def test_the_mlflow_share_of_an_import_log_counts_each_outermost_mlflow_entry_once():
    # python -X importtime's layout: children first, one indentation step (2 spaces) deeper.
    log = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       100 |        100 |       pandas.core",
        "import time:       200 |        300 |     pandas",
        "import time:       400 |        400 |     mlflow.entities",
        "import time:       500 |       1200 |   mlflow",
        "import time:        50 |       1300 | tuner.tracking.store",
        "import time:        70 |         70 |   mlflowish",
        "import time:        30 |        100 | other",
        "import time:       600 |        600 | mlflow.store.tracking.sqlalchemy_store",
    ])
    # mlflow (1200, its pandas and mlflow.entities inside) + the later top-level store (600).
    assert package_import_seconds(log, "mlflow") == pytest.approx(1800 / 1e6)
    assert package_import_seconds(log, "tuner") == pytest.approx(1300 / 1e6)
    assert package_import_seconds("no import lines", "mlflow") == 0
