"""The pending-write queue is a file in the search's state folder: replaying it must not do more
than the tracking callback could have asked for."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from tuner.tracking.buffer import REJECTED_FILE, TrackingWriter, replay
from tuner.tracking.operations import SEARCH_TARGET
from tuner.tracking.tags import KIND_TAG, UID_TAG


def test_a_replayed_queue_uploads_and_deletes_only_folders_in_its_staging_area(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = tmp_path / "state"
    writer = TrackingWriter(tracking_uri=uri, state_dir=state, search_name="s")
    writer.record({"op": "experiment", "name": "s"})
    writer.record({"op": "create_run", "target": SEARCH_TARGET, "run_name": "s",
                   "tags": {UID_TAG: "u1", KIND_TAG: "search"}})
    staged = writer.staging_dir("search-spec")
    staged.mkdir(parents=True)
    (staged / "spec.yaml").write_text("name: s\n")
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.txt").write_text("keep me")
    # Written into the queue file by someone else, as the driver would find it on `tuner flush`.
    with open(writer.pending_path, "a") as queue:
        for folder in (outside, staged / ".." / ".." / ".." / "precious", staged):
            queue.write(json.dumps({"op": "artifacts", "target": SEARCH_TARGET, "dir": str(folder)}) + "\n")

    assert replay(tracking_uri=uri, state_dir=state, search_name="s") == []
    assert (outside / "data.txt").read_text() == "keep me"  # neither uploaded nor deleted
    rejected = [json.loads(line) for line in (state / REJECTED_FILE).read_text().splitlines()]
    assert len(rejected) == 2 and all("is outside" in r["error"] for r in rejected)
    assert not staged.exists()  # the callback's own folder: uploaded, then removed
    client = MlflowClient(uri)
    run_id = writer.run_id(SEARCH_TARGET)
    assert [a.path for a in client.list_artifacts(run_id)] == ["spec.yaml"]


def test_a_fresh_create_sends_no_search_and_a_replayed_one_never_duplicates(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = tmp_path / "state"
    writer = TrackingWriter(tracking_uri=uri, state_dir=state, search_name="s")
    writer.record({"op": "experiment", "name": "s"})
    searches = []
    original = MlflowClient.search_runs
    monkeypatch.setattr(MlflowClient, "search_runs",
                        lambda self, *a, **k: searches.append(a) or original(self, *a, **k))
    create = {"op": "create_run", "target": SEARCH_TARGET, "run_name": "s",
              "tags": {UID_TAG: "u1", KIND_TAG: "search"}}
    writer.record(dict(create))
    assert searches == []  # recorded and sent by this process: nothing earlier to look for
    first = writer.run_id(SEARCH_TARGET)

    # The driver dies after MLflow created the run but before its id was saved: the next process
    # finds the create in the queue file, and must find the run instead of creating a second one.
    (state / "tuner_mlflow_runs.json").write_text(json.dumps({"experiment_id": writer.state["experiment_id"]}))
    with open(writer.pending_path, "a") as queue:
        queue.write(json.dumps(create) + "\n")
    assert replay(tracking_uri=uri, state_dir=state, search_name="s") == []
    assert len(searches) == 1
    experiment = MlflowClient(uri).get_experiment_by_name("s")
    runs = original(MlflowClient(uri), [experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [first]
