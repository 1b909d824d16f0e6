"""End to end: the real CLI runs a real search (local Ray, MLflow on SQLite) on the shipped images,
then leaderboard -> promote -> predict -> score, as `make demo` does, and the search's report."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import skip_or_fail

pytestmark = pytest.mark.slow

SPEC = {
    "name": "e2e",
    "metric": "val_acc",
    "mode": "max",
    "fixed": {"epochs": 3, "train_subset": 600, "augmentation": "light", "arch": "resnet18",
              "width": 0.125, "batch_size": 64},
    "space": {
        "lr": {"loguniform": [0.001, 1000.0]},
        "optimizer": {"choice": ["sgd", "adam"]},
    },
    # Known-good first (Adam at 0.003 is well above chance after the first epoch's 9 steps), then
    # SGD at 40: BatchNorm keeps the loss finite, if huge, and the model predicts one class, so its
    # val_acc is exactly chance (0.1) and ASHA must stop it at the first rung. Which of two points
    # that both learn is ahead after 9 steps changes with the CPU's float kernels; chance does not.
    # Then a rate so large that the loss becomes NaN in the first steps (the trial must end as
    # diverged).
    "points_to_evaluate": [{"lr": 0.003, "optimizer": "adam"}, {"lr": 40.0, "optimizer": "sgd"},
                           {"lr": 1000.0, "optimizer": "sgd"}],
    "sampler": {"name": "tpe", "seed": 0},
    # points_to_end off: by default ASHA lets the spec's points run to the end, and this search's
    # stopped trial is one of them.
    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2, "points_to_end": False},
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
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    work, _ = finished_search
    journal = work / "runs" / "e2e" / "tuner_state" / "optuna.journal"  # the study, as optuna-dashboard reads it
    study = optuna.load_study(study_name="e2e", storage=JournalStorage(JournalFileBackend(str(journal))))
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


# --- tuner report -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report_page(finished_search) -> tuple[Path, Path]:
    """`tuner report e2e` on the finished search: (its working folder, the index.html it printed)."""
    work, _ = finished_search
    return work, Path(tuner(work, "report", "e2e").stdout.strip())


def test_report_shows_every_section_with_the_search_numbers(report_page):
    import optuna

    from tuner.report import build_report
    from tuner.search.definition import load_definition
    from tuner.search.study_storage import load_search_study

    work, index = report_page
    assert index == work / "runs" / "e2e" / "report" / "index.html"
    page = index.read_text()
    _, places, spec = load_definition("e2e", str(work / "runs"))
    report = build_report("e2e", places, spec)  # the data behind the page's figures
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e2e")
    histories = {r.data.tags["tuner.trial_id"]: client.get_metric_history(r.info.run_id, "val_acc")
                 for r in client.search_runs([experiment.experiment_id], "tags.`tuner.kind` = 'trial'")}
    # Best so far: one point per reported epoch, ending on the best val_acc of any epoch.
    best = max(m.value for history in histories.values() for m in history)
    assert [p.epochs for p in report.progress] == list(range(1, sum(map(len, histories.values())) + 1))
    assert report.progress[-1].best == best and f"Best val_acc {best:.4f}" in page
    # Learning curves: every epoch of every trial; a trial ASHA stopped ends on one of its rungs.
    assert report.data.rungs == [1, 2]  # grace_period 1, reduction_factor 2, 3 epochs
    assert {t.trial: [p.epoch for p in t.curve] for t in report.data.trials} == \
        {trial: sorted(m.step for m in history) for trial, history in histories.items()}
    stopped = [t for t in report.data.trials if t.status == "early_stopped"]
    assert stopped and all(t.curve[-1].epoch == t.epochs in report.data.rungs for t in stopped)
    # Parallel coordinates and slices: lr on a log axis, the optimizer's choices in spec order.
    assert [(a.name, a.log, a.choices) for a in report.data.axes] == \
        [("lr", True, ()), ("optimizer", False, ("sgd", "adam"))]
    assert report.slices == ["lr", "optimizer"]
    # Importance: 4 trials are too few, and the page says how many finished.
    study = load_search_study(spec, places)
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert report.importance.complete == complete and f"this search has {complete}." in page
    # Timeline: one bar per trial, on one slot (max_concurrent 1), its idle share printed.
    assert sorted(b.trial for b in report.timeline.bars) == sorted(histories)
    assert report.timeline.slots == 1 and 0 <= report.timeline.idle_fraction < 1
    assert f"idle {report.timeline.idle_fraction:.1%} of the slot time" in page
    # Utilisation: the trials' epoch_time_s, summed from MLflow, over the slot time.
    epoch_seconds = sum(m.value for trial in report.data.trials
                        for m in client.get_metric_history(trial.run_id, "epoch_time_s"))
    line = report.timeline
    assert epoch_seconds > 0
    assert line.utilisation == pytest.approx(epoch_seconds / (line.slots * line.span_s))
    assert line.utilisation <= 1 - line.idle_fraction + 1e-9  # epochs happen inside the trials
    assert f"{line.utilisation:.1%} of it in the trials' epochs" in page
    # Leaderboard: a row per trial, with why it ended.
    table = page.split("<h2>Leaderboard</h2>")[1]
    assert table.count("<tr>") == 1 + len(histories)
    assert all(f"<td>early_stopped at epoch {t.epochs}</td>" in table for t in stopped)
    # Self-contained: the 5 figures with data inline, nothing to fetch, no script.
    assert page.count('src="data:image/png;base64,') == 5
    assert not re.search(r"https?://", page) and "<script" not in page and "<link" not in page


def test_report_is_logged_to_the_search_parent_run(report_page, tmp_path):
    work, index = report_page
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e2e")
    parent = client.search_runs([experiment.experiment_id], "tags.`tuner.kind` = 'search'")[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {f"report/{p.name}" for p in index.parent.iterdir()}
    assert {"report/index.html", "report/curves.png", "report/timeline.png"} <= logged
    copy = client.download_artifacts(parent.info.run_id, "report/index.html", str(tmp_path))
    assert Path(copy).read_text() == index.read_text()


def test_report_renders_offline_in_a_browser(report_page, tmp_path):
    """Headless Chromium opens the page from a file:// URL: every figure decodes, and the screenshot
    of the top of the page is a drawn one (kept in the tmp dir)."""
    from PIL import Image

    from tests.tuner.tracking.browser import CHROMIUM

    if not CHROMIUM.is_file():
        skip_or_fail("headless Chromium (/usr/bin/chromium, Debian package `chromium`) is missing")
    _, index = report_page
    images = asyncio.run(_open_report(index.as_uri(), tmp_path))
    assert len(images) == 5 and all(width > 0 for width in images), images
    pixels = np.asarray(Image.open(tmp_path / "report.png").convert("RGB"), dtype=float)
    assert pixels.std() > 20  # not a blank page
    # The first figure's best-so-far line (matplotlib's C0 blue) is on screen.
    assert (np.abs(pixels - (31, 119, 180)).max(axis=2) < 30).sum() > 200


async def _open_report(url: str, tmp_path: Path) -> list[int]:
    """The natural widths of the page's images (0: not decoded), after a screenshot."""
    from tests.tuner.tracking.browser import Page

    async with Page(tmp_path / "profile", width=1300, height=900) as page:
        await page.goto(url)
        await page.wait_for_text("Leaderboard")
        widths = await page.evaluate("[...document.images].map(i => i.complete ? i.naturalWidth : 0)")
        await page.screenshot(tmp_path / "report.png")
    return widths
