"""Restart safety at the callback level, with Ray's real Trial objects and results: a resumed driver
continues the same runs (none duplicated, no epoch logged twice), and a tracking store that never
answers costs nothing but a warning listing each unsent write, kept for a later replay."""

from __future__ import annotations

import json
import logging

import pytest
from mlflow.tracking import MlflowClient

from tests.tuner.tracking.conftest import (
    SEARCH, drive, free_port, make_tracking, pending_writes, ray_results, real_trials,
)
from tuner.tracking.buffer import replay
from tuner.tracking.run_state import load_run_state

pytestmark = pytest.mark.slow


def runs_by_kind(client: MlflowClient):
    experiment = client.get_experiment_by_name(SEARCH)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return ([r for r in runs if r.data.tags["tuner.kind"] == "search"],
            [r for r in runs if r.data.tags["tuner.kind"] == "trial"])


def assert_complete_tree(client: MlflowClient, results: dict) -> None:
    parents, children = runs_by_kind(client)
    assert len(parents) == 1 and len(children) == len(results)
    assert sorted(c.data.tags["tuner.trial_id"] for c in children) == sorted(results)
    for child in children:
        rows = results[child.data.tags["tuner.trial_id"]]
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")]
        assert sorted(steps) == [r["epoch"] for r in rows]  # each epoch exactly once
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.info.status == "FINISHED" and child.data.tags["tuner.status"] != "running"
    assert parents[0].info.status == "FINISHED"


def test_resumed_driver_continues_the_same_runs(resumed_store, team_search):
    _, uri, state_dir, first_state = resumed_store
    client = MlflowClient(uri)
    results = ray_results(team_search.ray_dir)
    assert_complete_tree(client, results)
    state = load_run_state(state_dir)
    assert state["parent_run_id"] == first_state["parent_run_id"]
    assert {t: e["run_id"] for t, e in state["trials"].items()} == \
        {t: e["run_id"] for t, e in first_state["trials"].items()}
    parents, _ = runs_by_kind(client)
    assert [a.path for a in client.list_artifacts(parents[0].info.run_id)] == ["team.yaml"]
    assert pending_writes(state_dir) == 0


def test_a_third_driver_on_a_finished_search_adds_nothing(resumed_store, team_search):
    root, uri, state_dir, _ = resumed_store
    client = MlflowClient(uri)
    before = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "val_acc"))
              for r in runs_by_kind(client)[1]}
    drive(make_tracking(uri, state_dir), real_trials(team_search.ray_dir), ray_results(team_search.ray_dir))
    after = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "val_acc"))
             for r in runs_by_kind(client)[1]}
    assert after == before


def test_unreachable_store_warns_with_every_unsent_write_then_replays(team_search, tmp_path, caplog,
                                                                     monkeypatch):
    for name, value in (("MAX_RETRIES", "0"), ("TIMEOUT", "10"), ("BACKOFF_FACTOR", "1")):
        monkeypatch.setenv(f"MLFLOW_HTTP_REQUEST_{name}", value)  # restored after the test
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    state_dir = tmp_path / "tuner_state"
    trials, results = real_trials(team_search.ray_dir), ray_results(team_search.ray_dir)
    with caplog.at_level(logging.WARNING, logger="tuner.tracking.buffer"):
        drive(make_tracking(dead, state_dir, team_search.work / "team.yaml"), trials, results)
    unsent = pending_writes(state_dir)
    # setup: experiment + parent + spec; per trial: create (the run starts RUNNING, with its
    # RUNNING tag: a first start sends nothing more), 1 per epoch, final tags, artifacts, status;
    # the end: summary + status.
    epochs = sum(len(rows) for rows in results.values())
    assert unsent == 3 + len(trials) * 4 + epochs + 2
    warning = next(r.getMessage() for r in caplog.records if "are NOT in MLflow" in r.getMessage())
    assert f"{unsent} writes of search {SEARCH} are NOT in MLflow" in warning
    assert warning.count("\n  [") == unsent and "tuner resume team" in warning
    assert "metrics best_val_acc, epoch" in warning  # each write named: what, which trial, which step

    live = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert replay(tracking_uri=live, state_dir=state_dir, search_name=SEARCH) == []
    assert pending_writes(state_dir) == 0
    client = MlflowClient(live)
    assert_complete_tree(client, results)
    for child in runs_by_kind(client)[1]:
        assert "config.json" in {a.path for a in client.list_artifacts(child.info.run_id)}


def test_crashed_and_diverged_trials_get_their_own_status(team_search, tmp_path):
    """A trial Ray reports as errored is `failed` (run FAILED); one whose last report says it
    diverged is `diverged`; the parent's counts follow."""
    trials, results = real_trials(team_search.ray_dir), ray_results(team_search.ray_dir)
    crashed, diverged = trials[0], trials[1]
    crashed.set_status("ERROR")
    last = results[diverged.trial_id][-1]
    results[diverged.trial_id][-1] = dict(last, status="diverged", train_loss=float("nan"))
    diverged.update_last_result(dict(results[diverged.trial_id][-1]))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    drive(make_tracking(uri, tmp_path / "tuner_state"), trials, results)
    client = MlflowClient(uri)
    parents, children = runs_by_kind(client)
    by_trial = {c.data.tags["tuner.trial_id"]: c for c in children}
    assert by_trial[crashed.trial_id].data.tags["tuner.status"] == "failed"
    assert by_trial[crashed.trial_id].info.status == "FAILED"
    assert by_trial[diverged.trial_id].data.tags["tuner.status"] == "diverged"
    assert parents[0].data.metrics["trials_failed"] == 1 and parents[0].data.metrics["trials_diverged"] == 1
    nan_losses = [m.value for m in client.get_metric_history(by_trial[diverged.trial_id].info.run_id, "train_loss")]
    assert any(v != v for v in nan_losses)  # the NaN that ended it is logged, not dropped
