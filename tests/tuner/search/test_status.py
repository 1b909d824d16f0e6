"""What a person sees of a search: the real CLI runs the shipped demo spec (8 trials, TPE + ASHA) on
the shipped sample, its output going to a pipe as in CI or ``make demo > log``; then ``tuner status``
reads the same search back from MLflow and its Optuna study.

The sample's stats.json is left out, so that every trial logs the same warning inside its worker
("no stats.json beside …"): the console must show it once. Short trials (3 epochs of 100 images) keep
the search near a minute on 2 cores; ASHA (grace period 2) still stops some at epoch 2.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tuner.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
NAME = "watched"
END_LINE = re.compile(r"^trial (\w{8}) (completed|early_stopped|converged|diverged|failed) ", re.M)
ORDER = ("running", "pending", "completed", "early_stopped", "converged", "diverged", "failed")


@pytest.fixture(scope="module")
def search(quick_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("watched")
    shutil.copytree(quick_data, work / "data" / "demo", ignore=shutil.ignore_patterns("stats.json"))
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.cli", "search", str(ROOT / "search_spaces" / "demo.yaml"),
         "--name", NAME, "--set", "epochs=3", "--set", "train_subset=100"],
        cwd=work, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc


def mlflow_trials(work: Path) -> dict:
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(NAME)
    return {r.data.tags["tuner.trial_id"]: r
            for r in client.search_runs([experiment.experiment_id], "tags.`tuner.kind` = 'trial'")}


def status_lines(work: Path, monkeypatch, capsys) -> list[str]:
    monkeypatch.chdir(work)
    assert main(["status", NAME]) == 0
    return capsys.readouterr().out.splitlines()


def test_a_logged_search_is_short_one_line_per_trial_and_each_warning_once(search):
    work, proc = search
    output = proc.stdout + proc.stderr
    assert len(output.splitlines()) <= 60, output
    assert "Trial status" not in output and "╭" not in output, output  # Ray's tables and boxes
    ended = dict(END_LINE.findall(proc.stdout))
    assert len(END_LINE.findall(proc.stdout)) == 8 == len(ended), proc.stdout
    assert ended == {trial: run.data.tags["tuner.status"] for trial, run in mlflow_trials(work).items()}
    assert "early_stopped" in ended.values()
    stopped = [line for line in proc.stdout.splitlines() if " early_stopped " in line]
    assert all(" early_stopped at epoch 2/3 by the asha scheduler: " in line for line in stopped), stopped
    warned = [line for line in proc.stdout.splitlines() if "no stats.json beside" in line]
    assert len(warned) == 1 and warned[0].startswith("warning from trial "), proc.stdout
    # The search ends with its report's path (tuner report, written and logged to MLflow).
    assert proc.stdout.rstrip().splitlines()[-1] == f"report: {work / 'runs' / NAME / 'report' / 'index.html'}"
    assert (work / "runs" / NAME / "report" / "index.html").is_file()


def test_status_of_a_finished_search_counts_what_mlflow_holds(search, monkeypatch, capsys):
    work, _ = search
    runs = mlflow_trials(work)
    statuses = [run.data.tags["tuner.status"] for run in runs.values()]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in ORDER if statuses.count(s))
    value = max(run.data.metrics["best_val_acc"] for run in runs.values())
    lines = status_lines(work, monkeypatch, capsys)
    assert lines[0].startswith(f"search {NAME} (finished): {counts}; 0 of 8 trials to go; "), lines
    # Trials at chance accuracy may tie for the best: any of them is the right answer.
    tied = [trial for trial, run in runs.items() if run.data.metrics["best_val_acc"] == value]
    assert any(lines[1].startswith(f"best val_acc: {value:.4f} (trial {trial}: lr=") for trial in tied), lines
    assert len(lines) == 2  # no trial runs any more


def test_status_of_a_running_search_lists_its_running_and_pending_trials(search, monkeypatch, capsys):
    """The same search, made to look mid-way: one trial's run back to running, one trial asked of
    Optuna that Ray has not started (both put back afterwards)."""
    work, _ = search
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    trial, run = next(iter(mlflow_trials(work).items()))
    parent = run.data.tags["mlflow.parentRunId"]
    journal = work / "runs" / NAME / "tuner_state" / "optuna.journal"
    study = optuna.load_study(study_name=NAME, storage=JournalStorage(JournalFileBackend(str(journal))))
    asked = study.ask()
    asked.set_user_attr("ray_trial_id", "pending1")
    client.set_tag(run.info.run_id, "tuner.status", "running")
    client.set_tag(parent, "tuner.status", "running")
    try:
        lines = status_lines(work, monkeypatch, capsys)
    finally:
        study.tell(asked, state=optuna.trial.TrialState.FAIL)
        client.set_tag(run.info.run_id, "tuner.status", run.data.tags["tuner.status"])
        client.set_tag(parent, "tuner.status", "completed")
    assert lines[0].startswith(f"search {NAME}: 1 running, 1 pending, "), lines
    epochs = int(run.data.metrics["epoch"])
    assert lines[2:] == [
        f"  {trial}  epoch {epochs}/3  val_acc {run.data.metrics['val_acc']:.4f}  "
        f"best {run.data.metrics['best_val_acc']:.4f}  {run.data.metrics['images_per_s']:,.0f} img/s  "
        f"lr={float(run.data.params['lr']):.4g}, batch_size={run.data.params['batch_size']}, "
        f"optimizer={run.data.params['optimizer']}, arch={run.data.params['arch']}, "
        f"width={float(run.data.params['width']):.4g}"
    ]
