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


def test_top_k_reads_the_same_best_runs_the_full_board_ranks_first(team_client):
    from tuner.tracking.leaderboard import load_board

    full = load_board(team_client, "team")
    for k in range(1, len(full.entries) + 1):
        assert load_board(team_client, "team", top=k).entries == full.entries[:k]


def test_the_table_shows_the_best_rows_unless_told_and_says_so(team_search, monkeypatch):
    import tuner.cli.results

    uri = team_search.server.uri
    board = json.loads(run_cli("leaderboard", "team", "--tracking-uri", uri, "--format", "json").stdout)
    monkeypatch.setattr(tuner.cli.results, "TABLE_ROWS", 2)
    table = run_cli("leaderboard", "team", "--tracking-uri", uri).stdout
    assert [e["trial"] in table for e in board] == [True, True, False, False]
    assert "the best 2 trials; --top N or --all for more" in table
    every = run_cli("leaderboard", "team", "--all", "--tracking-uri", uri).stdout
    assert all(e["trial"] in every for e in board) and "--all for more" not in every
    assert len(json.loads(run_cli("leaderboard", "team", "--tracking-uri", uri, "--format", "json").stdout)) == 4
    assert_user_error(run_cli("leaderboard", "team", "--all", "--top", "2", "--tracking-uri", uri),
                      "--top and --all: choose one")


def test_bad_input_is_one_line_and_status_2(team_search, tmp_path):
    uri = team_search.server.uri
    assert_user_error(run_cli("leaderboard", "nope", "--tracking-uri", uri), "no search named 'nope'")
    assert_user_error(run_cli("leaderboard", "team", "--top", "0", "--tracking-uri", uri),
                      "--top: must be >= 1")
    assert_user_error(run_cli("leaderboard", "team", cwd=tmp_path), "no MLflow store at")
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates a store
    dead = f"http://127.0.0.1:{free_port()}"
    assert_user_error(run_cli("leaderboard", "team", "--tracking-uri", dead), "is unreachable")


def test_leaderboard_on_a_real_store_loads_no_torch_or_ray(team_search, tmp_path):
    """The light command's promise (issue: `tuner leaderboard NAME` must not import torch or Ray),
    checked on the real search's store, not on --help."""
    from tests.test_architecture import run_light

    outcome = run_light("leaderboard", "team", "--tracking-uri", team_search.server.uri,
                        "--format", "json", cwd=tmp_path)
    assert outcome == {"code": 0, "heavy": []}


def test_the_ui_command_path_loads_no_torch_or_ray(team_search, tmp_path):
    """`tuner ui NAME` runs until Ctrl-C, so its library path is run directly: the command's module,
    the store and the view it installs on the real search."""
    import json
    import subprocess
    import sys

    probe = ("import json, sys\n"
             "from tuner.cli import results\n"
             "from tuner.tracking.store import open_client\n"
             "from tuner.tracking.ui import install_view\n"
             "install_view(open_client(sys.argv[1]), 'team')\n"
             "print(json.dumps(sorted(m for m in ('torch', 'ray', 'optuna') if m in sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", probe, team_search.server.uri], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
