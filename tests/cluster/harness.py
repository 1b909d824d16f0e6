"""Helpers of the multi-node tests: search specs, the CLI as a subprocess, what a search left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Optional

import yaml

# Tiny trials: a resnet18 at width 0.125 on 300 images of 32 px, a few seconds an epoch here.
FIXED = {"train_subset": 300, "arch": "resnet18", "width": 0.125, "batch_size": 64,
         "num_workers": 0, "optimizer": "sgd", "schedule": "none", "augmentation": "light"}


def write_spec(work: Path, data: Path, name: str, *, epochs: int, num_samples: int,
               max_concurrent: int, resources: dict) -> Path:
    spec = {
        "name": name,
        "metric": "val_acc",
        "mode": "max",
        "data": {"train": str(data / "train"), "val": str(data / "val"), "image_size": 32},
        "fixed": {**FIXED, "epochs": epochs},
        "space": {"lr": {"loguniform": [0.02, 0.1]}},
        "sampler": {"name": "random", "seed": 0},
        "scheduler": {"name": "fifo"},  # every trial runs all its epochs: counts are exact
        "budget": {"num_samples": num_samples, "max_concurrent": max_concurrent},
        "resources": resources,
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def tuner_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuner.cli", *args]


def run_tuner(work: Path, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(tuner_command(*args), cwd=work, env=env, capture_output=True, text=True,
                          timeout=timeout)


def start_tuner(work: Path, env: dict, name: str, *args: str) -> subprocess.Popen:
    """The CLI in the background (its own session, so a SIGKILL reaches the driver only)."""
    with (work / f"{name}.log").open("wb") as log:
        return subprocess.Popen(tuner_command(*args), cwd=work, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def trial_rows(storage: Path, name: str) -> dict[str, list[dict]]:
    """Every result each trial reported (Ray's result.json), keyed by trial folder."""
    rows = {}
    for path in sorted((storage / name).glob("*/result.json")):
        rows[path.parent.name] = []
        for line in path.read_text().splitlines():
            try:
                rows[path.parent.name].append(json.loads(line))
            except ValueError:  # the last line, while the driver is still writing it
                break
    return rows


def wait_for(predicate, *, timeout_s: float, interval_s: float = 0.2, what: str = "condition",
             process: Optional[subprocess.Popen] = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the search ended (exit {process.returncode}) before {what}")
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def log_tail(work: Path, name: str) -> str:
    path = work / f"{name}.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def python_without_the_package(root: Path) -> str:
    """An interpreter with every dependency of this project but not the project itself.

    A venv whose site-packages holds one .pth line naming this venv's site-packages: torch, ray, …
    import from there, but the .pth files of a folder added that way are not executed, so the
    editable install's finder never runs and ``import trainables`` fails, as on a node whose image
    lacks the package.
    """
    venv = root / "venv-without-tuner"
    if not venv.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        site = venv / "lib" / version / "site-packages"
        (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return str(venv / "bin" / "python")


def mlflow_runs(tracking_uri: str, search: str) -> tuple[list, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(search)
    assert experiment is not None, f"no MLflow experiment {search!r}"
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tuner.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("tuner.kind") == "trial"]
    return parents, children


def metric_steps(tracking_uri: str, run_id: str, metric: str = "val_acc") -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, metric))


def no_ray_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
