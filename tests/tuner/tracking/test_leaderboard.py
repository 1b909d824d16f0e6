"""`tuner leaderboard` on the team search: the ranking MLflow holds, as a table, CSV or JSON; bad
input is one line and exit status 2."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.tuner.tracking.conftest import assert_user_error, free_port, run_cli

pytestmark = pytest.mark.slow


def test_json_ranks_trials_by_best_val_acc(team_search, team_client):
    uri = team_search.server.uri
    board = json.loads(run_cli("leaderboard", "team", "--tracking-uri", uri,
                             "--format", "json").stdout)
    assert [e["rank"] for e in board] == [1, 2, 3, 4]
    bests = [e["best"] for e in board]
    assert bests == sorted(bests, reverse=True)
    for entry in board:
        run = team_client.get_run(entry["run_id"])
        history = team_client.get_metric_history(entry["run_id"], "val_acc")
        assert entry["best"] == max(m.value for m in history)
        assert entry["status"] == run.data.tags["tuner.status"]
        assert entry["trial"] == run.data.tags["tuner.trial_id"]
        assert entry["epochs"] == max(m.step for m in history)
        assert set(entry["params"]) == {"lr", "optimizer"}  # the searched ones, not the fixed


def test_csv_top_k_and_table(team_search):
    uri = team_search.server.uri
    rows = list(csv.DictReader(io.StringIO(run_cli("leaderboard", "team", "--top", "2",
                                                 "--tracking-uri", uri, "--format", "csv").stdout)))
    assert [r["rank"] for r in rows] == ["1", "2"]
    assert list(rows[0])[:7] == ["rank", "trial", "status", "best_val_acc", "val_acc", "val_loss", "epochs"]
    assert {"lr", "optimizer", "run_id"} <= set(rows[0])
    table = run_cli("leaderboard", "team", "--tracking-uri", uri).stdout
    assert "ranked by best val_acc" in table and rows[0]["trial"] in table
    assert table.index(rows[0]["trial"]) < table.index(rows[1]["trial"])


def test_bad_input_is_one_line_and_status_2(team_search, tmp_path):
    uri = team_search.server.uri
    assert_user_error(run_cli("leaderboard", "nope", "--tracking-uri", uri), "no search named 'nope'")
    assert_user_error(run_cli("leaderboard", "team", "--top", "0", "--tracking-uri", uri),
                      "--top: must be >= 1")
    assert_user_error(run_cli("leaderboard", "team", cwd=tmp_path), "no MLflow store at")
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates a store
    dead = f"http://127.0.0.1:{free_port()}"
    assert_user_error(run_cli("leaderboard", "team", "--tracking-uri", dead), "is unreachable")
