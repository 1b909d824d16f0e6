"""The MLflow run tree of a real search in team mode (PostgreSQL-backed server, HTTP artifacts),
written through a tracking-server outage: nothing lost, nothing doubled, no junk."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.tuner.tracking.conftest import SPEC, pending_writes, ray_results
from tuner.tracking.tags import METRIC_NAMES, TRIAL_STATUSES
from tuner.tracking.lineage import dataset_fingerprint

pytestmark = pytest.mark.slow

TUNER_COMMIT = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()


def search_runs(client, name):
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("tuner.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("tuner.kind") == "trial"]
    return experiment, parents, children


def test_the_buffer_is_replayed_mid_search_when_the_server_returns(team_search):
    assert team_search.returncode == 0
    assert team_search.pending_during_outage > 0  # the outage really cost writes
    # Sent while the search still ran: trial results were handled after the replay.
    assert team_search.results_at_replay < team_search.results_total, (
        team_search.results_at_replay, team_search.results_total)
    back = re.findall(r"MLflow at \S+ is back: (\d+) buffered writes sent", team_search.output)
    assert back and int(back[0]) >= team_search.pending_during_outage, back


def test_writes_unsent_at_the_end_are_listed_then_sent_by_tuner_flush(team_search):
    unsent = team_search.unsent_at_end
    assert unsent > 0  # the second outage lasted past the end of the search
    assert f"{unsent} writes of search team are NOT in MLflow yet" in team_search.output
    assert f"sent by `tuner resume team`:\n" in team_search.output
    listing = re.findall(r"^  \[(\d+)\] ", team_search.output, re.M)
    assert listing == [str(i) for i in range(1, unsent + 1)]  # each unsent write, one line each
    flush = team_search.flush
    assert (flush.returncode, flush.stdout, flush.stderr) == (0, "all buffered MLflow writes sent\n", "")
    assert pending_writes(team_search.state_dir) == 0


def test_every_reported_epoch_is_in_mlflow_once(team_search, team_client):
    """Per trial and metric, MLflow's history equals what Ray recorded: same steps, same values."""
    _, _, children = search_runs(team_client, team_search.name)
    results = ray_results(team_search.ray_dir)
    assert set(results) == {c.data.tags["tuner.trial_id"] for c in children}
    for child in children:
        rows = results[child.data.tags["tuner.trial_id"]]
        for name in ("val_acc", "val_loss", "train_loss", "lr", "epoch"):
            history = team_client.get_metric_history(child.info.run_id, name)
            logged = sorted((m.step, m.value) for m in history)
            expected = sorted((r["epoch"], float(r[name])) for r in rows)
            assert logged == expected, (child.info.run_name, name)
        best = [m.value for m in team_client.get_metric_history(child.info.run_id, "best_val_acc")]
        assert best == sorted(best) and best[-1] == max(r["val_acc"] for r in rows)


def test_run_tree_shape_params_and_no_junk(team_search, team_client):
    experiment, parents, children = search_runs(team_client, team_search.name)
    assert len(parents) == 1 and len(children) == SPEC["budget"]["num_samples"]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["tuner.status"] == "completed"
    assert parent.data.params["sampler.name"] == "tpe" and parent.data.params["scheduler.name"] == "asha"
    assert parent.data.params["space.lr"] == "loguniform"
    assert parent.data.tags["mlflow.source.git.commit"] == team_search.commit
    # The spec, and nothing from Ray; `tuner evaluate` of the ensemble registered from this search
    # (test_ensemble.py, same shared search) adds its own results folder beside it.
    artifacts = [a.path for a in team_client.list_artifacts(parent.info.run_id)]
    assert [a for a in artifacts if a != "evaluate"] == ["team.yaml"]
    allowed = set(METRIC_NAMES) | {"best_val_acc"}
    configs = {tid: rows[-1]["config"] for tid, rows in ray_results(team_search.ray_dir).items()}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.tags["tuner.status"] in TRIAL_STATUSES[1:]
        assert set(child.data.metrics) <= allowed, set(child.data.metrics) - allowed  # no pid, config/*
        config = configs[child.data.tags["tuner.trial_id"]]
        assert child.data.params == {k: str(v) for k, v in config.items()}
        assert child.data.tags["tuner.searched_params"] == "lr,optimizer"
        assert child.info.run_name.startswith("resnet18 w0.125 lr=")
    # The summary counts the children's final statuses, and names the best.
    statuses = [c.data.tags["tuner.status"] for c in children]
    for status in TRIAL_STATUSES[1:]:
        assert parent.data.metrics[f"trials_{status}"] == statuses.count(status)
    # val_acc moves in steps of 1/len(val): two trials may tie, and then the one started first is
    # the best, as the leaderboard ranks them.
    top = max(c.data.metrics["best_val_acc"] for c in children)
    best = min((c for c in children if c.data.metrics["best_val_acc"] == top), key=lambda c: c.info.start_time)
    assert parent.data.metrics["best_val_acc"] == top
    assert parent.data.tags["tuner.best_trial"] == best.data.tags["tuner.trial_id"]


def test_lineage_tags_and_checkpoint_uri(team_search, team_client, quick_data):
    _, _, children = search_runs(team_client, team_search.name)
    fingerprint = dataset_fingerprint({"train": str(quick_data / "train"), "val": str(quick_data / "val")})
    for child in children:
        tags = child.data.tags
        assert tags["tuner.dataset_fingerprint"] == fingerprint["tuner.dataset_fingerprint"]
        assert "train: 3000 files" in tags["tuner.dataset_files"]
        assert "torch=" in tags["tuner.versions"] and "mlflow=" in tags["tuner.versions"]
        # The repository the search was started in (the user's project), and tuner's own checkout.
        assert tags["mlflow.source.git.commit"] == team_search.commit
        assert tags["tuner.code_commit"] == TUNER_COMMIT
        checkpoint = Path(tags["tuner.best_checkpoint"]).resolve()
        assert checkpoint.is_relative_to(team_search.ray_dir.resolve())
        assert (checkpoint / "checkpoint.pt").is_file()


def test_trial_artifacts_are_logged_from_the_last_checkpoint(team_search, team_client):
    _, _, children = search_runs(team_client, team_search.name)
    for child in children:
        names = {a.path for a in team_client.list_artifacts(child.info.run_id)}
        assert {"config.json", "per_class.csv", "confusion.csv", "summary.json"} <= names, names
        if child.data.tags["tuner.status"] in ("completed", "converged"):  # ended itself: figures too
            assert {"confusion.png", "mistakes.png"} <= names, names
    # Staged copies are removed once uploaded.
    staged = team_search.state_dir / "mlflow_staged"
    assert not staged.exists() or not any(staged.iterdir())


def test_fingerprint_changes_with_the_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"1234")
    first = dataset_fingerprint({"train": str(tmp_path)})
    (tmp_path / "a" / "x.jpg").write_bytes(b"12345")  # same name, other size
    second = dataset_fingerprint({"train": str(tmp_path)})
    assert first["tuner.dataset_fingerprint"] != second["tuner.dataset_fingerprint"]
    assert first["tuner.dataset_files"] == "train: 1 files, 0.0 MiB"
