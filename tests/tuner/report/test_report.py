"""The report's parts that need no real search: worker slots and idle time, ASHA's rungs as Ray
builds them, and the bad inputs (no trial finished, unknown search, MLflow down). The report of a
real search is checked in tests/e2e/test_demo_search.py."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from trainables.status import RUNNING
from tuner.errors import UserError
from tuner.places import SearchPlaces
from tuner.report import write_report
from tuner.report.analysis import timeline
from tuner.report.data import TrialData, asha_rungs
from tuner.search.schedulers import build_scheduler
from tuner.spec import parse_spec
from tuner.tracking.tags import KIND_TAG, PARENT_TAG, STATUS_TAG, TRIAL_TAG


def trial(name: str, start: float, end: float, compute: float = 0.0) -> TrialData:
    return TrialData(trial=name, run_id=name, name=name, status="completed", params={}, curve=[],
                     epochs=0, start_s=start, end_s=end, best=None, compute_s=compute)


def test_trials_share_as_few_slots_as_ever_overlapped_and_idle_time_is_the_rest():
    # a runs 0-10; b (2-6) overlaps it, so a second slot; c (7-12) takes the slot b freed first.
    line = timeline([trial("c", 7, 12, 4), trial("a", 0, 10, 9), trial("b", 2, 6, 3)])
    assert [(b.trial, b.slot) for b in line.bars] == [("a", 0), ("b", 1), ("c", 1)]
    assert (line.slots, line.span_s) == (2, 12)
    assert line.idle_fraction == pytest.approx(1 - (10 + 4 + 5) / (2 * 12))
    # the trials' epochs took 9 + 3 + 4 s of the 2 x 12 slot-seconds
    assert line.utilisation == pytest.approx((9 + 3 + 4) / (2 * 12))


def spec_of(tmp_path: Path, name: str, **changes):
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True, exist_ok=True)
    raw = {"name": name, "data": {"train": str(tmp_path / "train"), "val": str(tmp_path / "val")},
           "fixed": {"epochs": 20}, "space": {"lr": {"loguniform": [0.001, 0.1]}}, **changes}
    return parse_spec(raw, source="s.yaml")


@pytest.mark.parametrize("grace, factor", [(1, 2), (2, 3), (3, 4), (25, 2)])
def test_the_rungs_are_the_milestones_ray_asha_stops_trials_at(tmp_path, grace, factor):
    spec = spec_of(tmp_path, "r", scheduler={"name": "asha", "grace_period": grace,
                                              "reduction_factor": factor})
    asha = build_scheduler("asha", metric="val_acc", mode="max", epochs=spec.epochs,
                           options=spec.scheduler.options)
    milestones = sorted(m for m, _ in asha._brackets[0]._rungs if m < spec.epochs)
    assert asha_rungs(spec) == milestones


def places_of(tmp_path: Path, name: str, tracking_uri: str) -> SearchPlaces:
    state = tmp_path / "runs" / name / "tuner_state"
    state.mkdir(parents=True, exist_ok=True)
    return SearchPlaces(str(tmp_path / "runs"), tracking_uri, None, state)


def test_a_search_without_a_finished_trial_gets_a_report_that_says_so(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("quiet", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment, tags={KIND_TAG: "search"}).info.run_id
    client.create_run(experiment, tags={KIND_TAG: "trial", PARENT_TAG: parent, TRIAL_TAG: "t1",
                                        STATUS_TAG: RUNNING})
    index = write_report("quiet", places_of(tmp_path, "quiet", uri), spec=spec_of(tmp_path, "quiet"))
    page = index.read_text()
    assert index == tmp_path / "runs" / "quiet" / "report" / "index.html"
    assert "1 trials: 1 running." in page
    assert "No trial of this search has finished yet: no epoch to plot." in page
    # Its running trial is on the timeline; nothing else has data to draw.
    assert [p.name for p in index.parent.glob("*.png")] == ["timeline.png"]
    assert page.count("data:image/png;base64,") == 1
    assert "<td>t1</td><td>running</td><td>running</td>" in page
    assert "No Optuna study named &#x27;quiet&#x27; in the search&#x27;s storage." in page
    assert [a.path for a in client.list_artifacts(parent, "report")] == ["report/index.html",
                                                                         "report/timeline.png"]


def test_an_unknown_search_is_a_user_error_naming_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the store
    places = places_of(tmp_path, "nope", uri)
    with pytest.raises(UserError, match="no search named 'nope'"):
        write_report("nope", places, spec=spec_of(tmp_path, "nope"))
    with pytest.raises(UserError, match="no search named 'nope'"):
        write_report("nope", places)  # no saved definition either


def test_mlflow_down_is_a_user_error(tmp_path, monkeypatch):
    for variable in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(variable, "0" if "RETRIES" in variable else "5")  # restored after
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    places = places_of(tmp_path, "down", f"http://127.0.0.1:{port}")
    with pytest.raises(UserError, match=f"tracking store http://127.0.0.1:{port} is unreachable"):
        write_report("down", places, spec=spec_of(tmp_path, "down"))
