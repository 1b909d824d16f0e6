"""The search's console (``tuner.search.console``): its lines from fake trials (cheap), then in a
real Ray search of the synthetic trainable drawn on a recording terminal, where one trial raises."""

from __future__ import annotations

import io
import logging
import pickle
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from tests.tuner.search import synthetic
from trainables.trial import MAX_WARNINGS, TOO_MANY, _collecting, _WarningLog
from tuner.places import SearchPlaces
from tuner.search.command import make_tracking
from tuner.search.console import SearchConsole, SearchView, TrialRow, end_line, summary_lines
from tuner.search.driver import run_search
from tuner.spec import parse_spec


def make_spec(tmp_path: Path, name: str = "watch", **raw):
    return parse_spec({
        "name": name, "data": {"train": str(tmp_path), "val": str(tmp_path)},
        "fixed": {"epochs": 4}, "resources": {"cpu": 1, "gpu": 0},
        "space": {"lr": {"loguniform": [0.001, 1.0]}, "optimizer": {"choice": ["sgd", "adam"]}},
        "budget": {"num_samples": 5, "max_concurrent": 2, "max_failures": 0}, **raw,
    }, source=f"{name}.yaml")


def fake_trial(trial_id: str, status: str = "RUNNING", *, epoch: int = 0, acc: float = 0.0,
               best: float = 0.0, error_file: str = None):
    """What the console reads of a Ray Trial."""
    result = {"epoch": epoch, "val_acc": acc, "status": "running", "images_per_s": 1234.5} if epoch else {}
    return SimpleNamespace(trial_id=trial_id, status=status, last_result=result,
                           config={"lr": 0.012345, "optimizer": "sgd", "epochs": 4},
                           metric_analysis={"val_acc": {"max": best}} if epoch else {},
                           error_file=error_file, num_failures=0)


def recording(terminal: bool) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=100, record=True)


def test_a_running_search_shows_counts_best_and_one_line_per_running_trial():
    view = SearchView("s", "val_acc", "max", budget=8, elapsed_s=95, time_budget_s=600, trials=[
        TrialRow("aaa", "running", {"lr": 0.012345, "optimizer": "sgd"}, 6, 3, 0.41, 0.45, 812.3),
        TrialRow("bbb", "completed", {"lr": 0.3, "optimizer": "adam"}, 6, 6, 0.5, 0.52),
        TrialRow("ccc", "early_stopped", {"lr": 0.001, "optimizer": "sgd"}, 6, 2, 0.2, 0.2),
        TrialRow("ddd", "pending", {"lr": 0.05, "optimizer": "sgd"}, 6),
    ])
    assert summary_lines(view) == [
        "search s: 1 running, 1 pending, 1 completed, 1 early_stopped; 6 of 8 trials to go; "
        "1m35s elapsed; 8m25s of the time budget left",
        "best val_acc: 0.5200 (trial bbb: lr=0.3, optimizer=adam)",
        "  aaa  epoch 3/6  val_acc 0.4100  best 0.4500  812 img/s  lr=0.01235, optimizer=sgd",
    ]


@pytest.mark.parametrize("status, words", [
    ("completed", "trial t completed after all 6 epochs: best val_acc 0.5000 (lr=0.1)"),
    ("early_stopped", "trial t early_stopped at epoch 2/6 by the asha scheduler: best val_acc 0.5000 (lr=0.1)"),
    ("converged", "trial t converged at epoch 2/6: its learning rate fell below min_lr: best val_acc"),
    ("diverged", "trial t diverged at epoch 2/6: its training loss became NaN or infinite: best"),
])
def test_an_end_line_says_how_and_why_a_trial_ended(status, words):
    epoch = 6 if status == "completed" else 2
    row = TrialRow("t", status, {"lr": 0.1}, 6, epoch, 0.5, 0.5)
    assert end_line(row, "val_acc", stopped_by="the asha scheduler").startswith(words)


def test_the_callback_prints_end_lines_each_warning_once_and_the_error_of_a_failure(tmp_path):
    screen = recording(terminal=False)
    console = SearchConsole(make_spec(tmp_path), budget=5, console=screen)
    console.setup()
    running = fake_trial("r1", epoch=1, acc=0.3, best=0.3)
    for trial_id in ("r1", "r2"):
        warnings = ("x: no stats.json", "y: slow")  # every trial logs the same two
        console.on_trial_result(0, [running], fake_trial(trial_id), {"warnings": warnings})
    stopped = fake_trial("r1", "TERMINATED", epoch=2, acc=0.3, best=0.35)
    console.on_trial_complete(0, [], stopped)
    error = tmp_path / "error.txt"
    error.write_text("Failure # 1\nTraceback (most recent call last):\n  File x\nValueError: bad batch\n\n")
    failed = fake_trial("r2", "ERROR", epoch=1, best=0.1, error_file=str(error))
    console.on_trial_error(0, [], failed)
    console.on_experiment_end([stopped, failed])
    assert screen.export_text().splitlines() == [
        "warning from trial r1: x: no stats.json",
        "warning from trial r1: y: slow",
        "trial r1 early_stopped at epoch 2/4 by the asha scheduler: best val_acc 0.3500 "
        "(lr=0.01235, optimizer=sgd)",
        f"trial r2 failed at epoch 1/4: ValueError: bad batch (full error: {error})",
        "search watch (finished): 1 early_stopped, 1 failed; 3 of 5 trials to go; 0s elapsed",
    ]


def test_a_trial_reports_each_distinct_warning_once_and_at_most_a_few():
    """The trainable's side (trainables.trial): log records and Python warnings, one line each."""
    collected = _WarningLog()
    with _collecting(collected):
        logging.getLogger("trainables.data").warning("no stats.json beside %s", "train")
        warnings.warn("deprecated knob\nsecond line", UserWarning)
        logging.getLogger("trainables.data").warning("no stats.json beside %s", "train")
        logging.getLogger("trainables.data").info("not a warning")
    first = collected.drain()
    assert first[0] == "trainables.data: no stats.json beside train"
    assert len(first) == 2 and first[1].startswith("py.warnings: ") and "UserWarning: deprecated knob" in first[1]
    with _collecting(collected):
        for i in range(MAX_WARNINGS + 5):
            logging.getLogger("trainables.data").warning("skipping unreadable image %d", i)
    assert collected.drain() == tuple(f"trainables.data: skipping unreadable image {i}"
                                      for i in range(MAX_WARNINGS - 2)) + (TOO_MANY,)
    assert collected.drain() == ()
    assert collected not in logging.getLogger().handlers  # the trial's end takes it away again


def test_on_a_terminal_the_view_is_redrawn_and_survives_pickling(tmp_path):
    screen = recording(terminal=True)
    console = SearchConsole(make_spec(tmp_path), budget=5, console=screen)
    console.setup()
    console.on_step_begin(0, [fake_trial("r1", epoch=2, acc=0.3, best=0.35), fake_trial("r2", "PENDING")])
    drawn = screen.export_text()
    assert "search watch: 1 running, 1 pending; 5 of 5 trials to go" in drawn
    assert "  r1  epoch 2/4  val_acc 0.3000  best 0.3500  1,234 img/s  lr=0.01235, optimizer=sgd" in drawn
    # Ray pickles callbacks with the experiment (tuner.pkl), while the Live view runs.
    restored = pickle.loads(pickle.dumps(console))
    assert restored.console is not screen and restored.name == "watch"
    console.close()
    assert console._live is None


# --- a real search ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    events = tmp_path_factory.mktemp("events")
    synthetic.start_ray_session(events, num_cpus=2)
    yield events
    synthetic.stop_ray_session()


@pytest.mark.slow
def test_a_real_search_draws_on_a_terminal_and_prints_one_line_per_failure(ray_session, tmp_path, capfd):
    spec = make_spec(tmp_path, "crash", space={"lr": {"loguniform": [0.01, 0.1]},
                                               "weight_decay": {"choice": [0.0, 0.9]}},
                     points_to_evaluate=[{"lr": 0.05, "weight_decay": 0.0}, {"lr": 0.05, "weight_decay": 0.9}],
                     sampler={"name": "random", "seed": 0}, scheduler={"name": "fifo"},
                     budget={"num_samples": 2, "max_concurrent": 1, "max_failures": 0})
    places = SearchPlaces(str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}",
                          tmp_path / "mlruns", tmp_path / "runs" / spec.name / "tuner_state")
    screen = recording(terminal=True)
    run_search(spec, places, make_tracking(spec, places, None, tmp_path),
               trainable=synthetic.synthetic_trial, screen=screen)
    drawn = screen.export_text()  # the Live view's frames run into the persistent lines
    assert re.search(r"  \w{8}  epoch \d/4  val_acc 0\.\d{4}  best 0\.\d{4}  lr=", drawn), drawn
    failed = re.findall(r"trial \w{8} failed[^\n]*?\)", drawn)
    assert len(failed) == 1, drawn
    match = re.fullmatch(r"trial \w{8} failed before its first epoch: RuntimeError: planted crash "
                         r"\(full error: (\S+error\.txt)\)", failed[0])
    assert match and Path(match.group(1)).is_file(), failed[0]
    assert len(re.findall(r"trial \w{8} completed after all 4 epochs", drawn)) == 1
    # Ray's own output is off: no boxes, no status tables, no traceback of the failed trial.
    out, err = capfd.readouterr()
    assert out == "" and "Traceback" not in err and "Trial status" not in err, (out, err)
