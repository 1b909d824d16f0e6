"""End to end: the real CLI runs a real search (local Ray, MLflow on SQLite) on the shipped images,
then leaderboard -> promote -> predict -> score, as `make demo` does."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

SPEC = {
    "name": "e2e",
    "metric": "val_acc",
    "mode": "max",
    "fixed": {"epochs": 3, "train_subset": 600, "augmentation": "light", "arch": "resnet18",
              "width": 0.125, "batch_size": 64},
    "space": {
        "lr": {"loguniform": [0.005, 1000.0]},
        "optimizer": {"choice": ["sgd", "adam"]},
    },
    # Known-good first, then a learning rate far too small to learn (ASHA must stop it), then one
    # so large that the loss becomes NaN in the first steps (the trial must end as diverged; at 40
    # BatchNorm keeps the loss finite, if huge, and the trial merely learns nothing).
    "points_to_evaluate": [{"lr": 0.05, "optimizer": "sgd"}, {"lr": 0.0050001, "optimizer": "adam"},
                           {"lr": 1000.0, "optimizer": "sgd"}],
    "sampler": {"name": "tpe", "seed": 0},
    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
    "budget": {"num_samples": 4, "max_concurrent": 1},
    "resources": {"cpu": 1, "gpu": 0},
}


def tuner(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"tuner {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory, quick_data):
    """The search, on the shipped sample with a 200-image validation set (the 3,000 training
    images and the 1,000 test images are the sample's own)."""
    work = tmp_path_factory.mktemp("e2e")
    spec = dict(SPEC, data={"train": str(quick_data / "train"), "val": str(quick_data / "val"),
                            "image_size": 32})
    (work / "e2e.yaml").write_text(yaml.safe_dump(spec))
    search = tuner(work, "search", "e2e.yaml")
    return work, search


def test_search_writes_a_run_tree_with_every_epoch(finished_search):
    work, _ = finished_search
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tuner.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("tuner.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        history = client.get_metric_history(child.info.run_id, "val_acc")
        epochs = int(child.data.metrics["epoch"])
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))
        assert child.data.params["lr"] and child.data.params["optimizer"] in ("sgd", "adam")
        # Ray's junk never reaches MLflow.
        assert not any(k.startswith("config/") or k in ("pid", "timestamp", "done")
                       for k in child.data.metrics)
    statuses = [c.data.tags["tuner.status"] for c in children]
    assert "early_stopped" in statuses, statuses
    assert all(s in ("completed", "early_stopped", "converged", "diverged") for s in statuses), statuses
    planted = [c for c in children if float(c.data.params["lr"]) == 1000.0]
    assert [c.data.tags["tuner.status"] for c in planted] == ["diverged"]
    assert planted[0].info.status == "FINISHED"  # a diverged trial is a result, not a crash


def test_leaderboard_order_matches_mlflow(finished_search):
    work, _ = finished_search
    out = tuner(work, "leaderboard", "e2e", "--format", "json").stdout
    board = json.loads(out)
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    best = []
    for entry in board:
        history = client.get_metric_history(entry["run_id"], "val_acc")
        best.append(max(m.value for m in history))
        assert entry["best"] == pytest.approx(best[-1])
    assert best == sorted(best, reverse=True)
    assert len(board) == 4
    assert "best val_acc" in tuner(work, "leaderboard", "e2e").stdout


def test_promote_then_predict_writes_a_valid_submission(finished_search, demo_data):
    work, _ = finished_search
    promoted = tuner(work, "promote", "e2e").stdout
    assert "alias @champion" in promoted
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    version = client.get_model_version_by_alias("e2e", "champion")
    board = json.loads(tuner(work, "leaderboard", "e2e", "--format", "json").stdout)
    assert version.tags["tuner.trial_id"] == board[0]["trial"]
    assert version.tags["tuner.run_id"] == board[0]["run_id"]

    tuner(work, "predict", "models:/e2e@champion", "--images", str(demo_data / "test"),
          "--out", "submission.csv", "--quiet")
    with open(work / "submission.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    classes = {p.name for p in (demo_data / "train").iterdir()}
    assert [int(r["id"]) for r in rows] == list(range(1, 1001))
    assert all(r["predicted"] in classes for r in rows)
    score = tuner(work, "score", "submission.csv", "--key", str(demo_data / "test_labels.csv")).stdout
    accuracy = float(score.split("accuracy ")[1].split()[0])
    assert accuracy > 0.15  # clearly above chance (0.10) after 3 short epochs


def test_same_name_again_is_refused_and_loses_nothing(finished_search):
    work, _ = finished_search
    before = sorted(p.name for p in (work / "runs" / "e2e").iterdir())
    proc = tuner(work, "search", "e2e.yaml", check=False)
    assert proc.returncode == 2
    assert "already exists" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in (work / "runs" / "e2e").iterdir()) == before


def test_optuna_study_holds_the_truth_about_every_trial(finished_search):
    import optuna

    work, _ = finished_search
    study = optuna.load_study(study_name="e2e",
                              storage=f"sqlite:///{work / 'runs' / 'e2e' / 'tuner_state' / 'optuna.db'}")
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e2e")
    status = {r.data.tags["tuner.trial_id"]: r.data.tags["tuner.status"]
              for r in client.search_runs([experiment.experiment_id])
              if r.data.tags.get("tuner.kind") == "trial"}
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert set(by_ray_id) == set(status)
    for trial_id, tag in status.items():
        trial = by_ray_id[trial_id]
        expected = {"early_stopped": optuna.trial.TrialState.PRUNED,
                    "completed": optuna.trial.TrialState.COMPLETE,
                    "converged": optuna.trial.TrialState.COMPLETE,
                    "diverged": optuna.trial.TrialState.FAIL}[tag]
        assert trial.state == expected, (trial_id, tag, trial.state)
        # Pruned trials keep their intermediate values: TPE learns from what they did reach.
        assert tag == "diverged" or len(trial.intermediate_values) >= 1
    diverged = [t for t in study.trials if t.params["lr"] == 1000.0]
    assert [t.state for t in diverged] == [optuna.trial.TrialState.FAIL]
    assert sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials) == \
        sum(tag == "early_stopped" for tag in status.values()) >= 1
