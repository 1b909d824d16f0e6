"""A search survives its driver: SIGKILL mid-search, `tuner resume` finishes it with exactly the
requested trials and no duplicates; `--more` extends it on the same Optuna study; the study lives in
PostgreSQL (team mode) and is read back with Optuna's own API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import fresh_postgres_database

pytestmark = pytest.mark.slow

PASSWORD_ENV = "TUNER_TEST_PGPASS"


@pytest.fixture
def postgres_db():
    with fresh_postgres_database() as dsn:
        yield dsn


def cli(cwd: Path, *args: str, **kw):
    return subprocess.Popen([sys.executable, "-m", "tuner.cli", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True, **kw)


def finish(proc: subprocess.Popen, timeout: int = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def child_runs(work: Path, name: str):
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("tuner.kind") == "trial"]


def wait_for(condition, driver: subprocess.Popen, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if driver.poll() is not None:
            raise AssertionError(f"the search ended (exit {driver.returncode}) before {what}:\n"
                                 + driver.communicate()[0][-3000:])
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def test_sigkill_then_resume_then_more(tmp_path, quick_data, postgres_db, monkeypatch):
    # The spec names the password by a variable (trust auth ignores it): every process expands it
    # where it opens the study, and no file of the search ever holds its value.
    password = f"dummy-{uuid.uuid4().hex}"
    monkeypatch.setenv(PASSWORD_ENV, password)
    spec = {
        "name": "rs",
        "data": {"train": str(quick_data / "train"), "val": str(quick_data / "val"), "image_size": 32},
        "fixed": {"epochs": 3, "train_subset": 300, "width": 0.125, "batch_size": 64},
        "space": {"lr": {"loguniform": [0.01, 0.2]}},
        "scheduler": {"name": "fifo"},
        "budget": {"num_samples": 4, "max_concurrent": 2},
        "storage": postgres_db.replace("postgres@", "postgres:${%s}@" % PASSWORD_ENV),
    }
    (tmp_path / "rs.yaml").write_text(yaml.safe_dump(spec))
    driver = cli(tmp_path, "search", "rs.yaml")
    # Kill the driver once a trial has reported an epoch but before the search is over; a wait
    # that times out or a driver that ends first fails here, not as a trivially "killed" search.
    wait_for(lambda: any("val_acc" in r.data.metrics for r in child_runs(tmp_path, "rs")),
             driver, timeout=240, what="a trial's first epoch in MLflow")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    killed = child_runs(tmp_path, "rs")
    assert killed and (len(killed) < 4 or any(r.data.tags["tuner.status"] == "running" for r in killed))

    finish(cli(tmp_path, "resume", "rs"))
    runs = child_runs(tmp_path, "rs")
    assert len(runs) == 4, [r.info.run_name for r in runs]
    assert len({r.data.tags["tuner.trial_id"] for r in runs}) == 4
    assert all(r.data.tags["tuner.status"] == "completed" for r in runs)
    for run in runs:  # every epoch logged exactly once: an epoch Ray re-runs after the restore too
        steps = [m.step for m in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == [1, 2, 3], (run.info.run_name, steps)

    study = optuna.load_study(study_name="rs", storage=postgres_db)
    real = [t for t in study.trials if not t.user_attrs.get("tuner_orphaned")]
    assert len(real) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in real)
    assert {t.user_attrs["ray_trial_id"] for t in real} == {r.data.tags["tuner.trial_id"] for r in runs}

    finish(cli(tmp_path, "resume", "rs", "--more", "2"))
    runs = child_runs(tmp_path, "rs")
    assert len(runs) == 6
    study = optuna.load_study(study_name="rs", storage=postgres_db)
    real = [t for t in study.trials if not t.user_attrs.get("tuner_orphaned")]
    assert len(real) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in real)
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]

    leaked = [str(p.relative_to(tmp_path)) for p in sorted(tmp_path.rglob("*"))
              if p.is_file() and password.encode() in p.read_bytes()]
    assert leaked == []
    unset = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    missing = subprocess.run([sys.executable, "-m", "tuner.cli", "resume", "rs"], cwd=tmp_path,
                             capture_output=True, text=True, env=unset)
    assert missing.returncode == 2 and f"environment variable {PASSWORD_ENV} is not set" in missing.stderr

    gone = subprocess.run([sys.executable, "-m", "tuner.cli", "resume", "nope"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert gone.returncode == 2 and "no search named 'nope'" in gone.stderr
