"""bench/leaderboard_phases.py on a handful of runs: the store it writes is a search the real
``tuner leaderboard`` ranks, and the phases it saves add up within the whole command."""

from __future__ import annotations

import json

from bench.leaderboard_phases import main


def test_a_small_store_is_ranked_and_its_phases_fit_in_the_command(tmp_path):
    out = tmp_path / "phases.json"
    assert main(["--runs", "4", "--epochs", "2", "--repeats", "1", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["command"] == "python bench/leaderboard_phases.py --runs 4 --epochs 2 --repeats 1 --out " + str(out)
    assert saved["runs"] == 4 and len(saved["repeats"]) == 1
    repeat = saved["repeats"][0]
    assert repeat["rows"] == 4  # every trial run of the written search is on the board
    assert repeat["table_lines"] >= 4 + 4  # the title, header and borders, and one line per trial
    phases = saved["phases_s"]
    assert all(v > 0 for v in phases.values())
    assert saved["mlflow_share_s"] == round(phases["import_mlflow_s"] + phases["open_store_s"], 3)
    assert 0 < saved["python_s"] < saved["cli_s"]
