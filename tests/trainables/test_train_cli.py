"""`tuner train`: one trial without Ray on images of the shipped sample, with progress bars, resumed.

The demo's own search spec drives it (its data pointed at a 120-image cut of the shipped sample, so
that each validation pass takes milliseconds rather than the 1,000-image demo split's seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tuner.cli import main

REPO = Path(__file__).resolve().parents[2]


def tuner(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_tuner_train_runs_a_search_specs_trial_and_resumes_it(tiny_data, tmp_path, monkeypatch, capsys):
    spec = yaml.safe_load((REPO / "search_spaces" / "demo.yaml").read_text())
    spec["data"] = {"train": str(tiny_data / "train"), "val": str(tiny_data / "val"), "image_size": 32}
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(spec))
    small = ["--set", "train_subset=48", "--set", "batch_size=16", "--out", "debug"]

    first = tuner(tmp_path, "train", "demo.yaml", "--set", "epochs=2", *small)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "epoch 1/2" in first.stderr and "48/48" in first.stderr  # bars with their total
    lines = [json.loads(line) for line in (tmp_path / "debug" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and lines[-1]["status"] == "completed"
    artifacts = tmp_path / "debug" / "checkpoint" / "artifacts"
    assert {"config.json", "per_class.csv", "confusion.png", "mistakes.png"} <= {p.name for p in artifacts.iterdir()}
    config = json.loads((artifacts / "config.json").read_text())
    # The spec's fixed values and a representative of each searched one (first choice, log-middle lr).
    assert config["arch"] == "resnet18" and config["width"] == 0.125 and config["batch_size"] == 16
    assert 0.001 < config["lr"] < 0.5 and config["schedule"] == "onecycle" and config["label_smoothing"] == 0.1

    monkeypatch.chdir(tmp_path)  # the refusals happen before any training: run them in-process
    assert main(["train", "demo.yaml", "--set", "epochs=2", *small]) == 2
    assert "holds a checkpoint already; add --resume" in capsys.readouterr().err

    resumed = tuner(tmp_path, "train", "demo.yaml", "--set", "epochs=3", *small, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "epoch 3/3" in resumed.stderr and "epoch 1/" not in resumed.stderr
    lines = [json.loads(line) for line in (tmp_path / "debug" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3] and lines[-1]["final"] is True


def test_tuner_train_rejects_a_bad_setting_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump({"train_dir": "train", "val_dir": "val"}))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "trial.yaml", "--set", "lr=-1"]) == 2
    assert capsys.readouterr().err.strip() == "tuner: error: lr: must be a finite number > 0, got -1.0"
