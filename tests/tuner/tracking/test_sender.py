"""The sender thread: Ray's loop only records, a thread sends, in each run's order, in fewer writes
when it fell behind, and a driver that dies before it sent loses nothing."""

from __future__ import annotations

import json
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from tuner.tracking.batching import coalesced
from tuner.tracking.buffer import PENDING_FILE, REJECTED_FILE, TrackingWriter
from tuner.tracking.operations import SEARCH_TARGET
from tuner.tracking.sender import Sender
from tuner.tracking.tags import KIND_TAG, TRIAL_TAG, UID_TAG

TRIALS = ("t0", "t1", "t2")
EPOCHS = 4


def log(target: str, epoch: int) -> dict:
    return {"op": "log", "target": target, "metrics": [["val_acc", epoch / 10, 1000 + epoch, epoch]]}


def search_ops() -> list[dict]:
    """What a callback records for three trials of four epochs, the trials interleaved as they run."""
    ops = [{"op": "experiment", "name": "s"},
           {"op": "create_run", "target": SEARCH_TARGET, "run_name": "s",
            "tags": {UID_TAG: "u1", KIND_TAG: "search"}}]
    ops += [{"op": "create_run", "target": t, "run_name": t, "params": {"lr": "0.1"},
             "tags": {UID_TAG: "u1", KIND_TAG: "trial", TRIAL_TAG: t}} for t in TRIALS]
    for epoch in range(1, EPOCHS + 1):
        ops += [log(t, epoch) for t in TRIALS]
    ops += [{"op": "status", "target": t, "status": "FINISHED"} for t in TRIALS]
    return ops


def assert_all_logged(uri: str, writer: TrackingWriter) -> None:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("s")
    assert len(client.search_runs([experiment.experiment_id])) == 1 + len(TRIALS)  # no duplicate
    for trial in TRIALS:
        run_id = writer.run_id(trial)
        history = client.get_metric_history(run_id, "val_acc")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
        assert client.get_run(run_id).info.status == "FINISHED"


def test_coalesced_merges_a_runs_logs_across_other_runs_but_never_across_its_own_other_writes():
    ops = [log("a", 1), log("b", 1), log("a", 2), {"op": "status", "target": "a", "status": "FINISHED"},
           log("a", 3), log("b", 2), {"op": "artifacts", "target": "b", "dir": "x"}, log("b", 3)]
    groups = coalesced(ops)
    assert [[ops.index(op) for op in group] for group in groups] == [[0, 2], [1, 5], [3], [4], [6], [7]]


def test_the_loop_only_records_and_a_sender_that_fell_behind_catches_up_in_fewer_writes(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    writer = TrackingWriter(tracking_uri=uri, state_dir=tmp_path / "state", search_name="s")
    entered, release, sends, senders = threading.Event(), threading.Event(), [], set()
    apply = writer.apply

    def slow_apply(op, first_attempt=False):  # MLflow is slow until the loop has recorded everything
        entered.set()
        release.wait(timeout=30)
        sends.append(op)
        senders.add(threading.current_thread().name)
        apply(op, first_attempt=first_attempt)

    writer.apply = slow_apply
    Sender.start(writer)
    ops = search_ops()
    writer.record(ops[0])
    assert entered.wait(timeout=30)  # the first write is in flight: the rest queue behind it
    for op in ops[1:]:
        writer.record(op)  # returns at once although no send can finish
    assert sends == [] and writer.waiting == len(ops)
    release.set()
    deadline = time.monotonic() + 60
    while writer.waiting and time.monotonic() < deadline:  # the thread catches up on its own
        time.sleep(0.05)
    writer.close()

    assert senders == {"mlflow-sender-s"}  # not the recording thread
    assert writer.sender is None and writer.waiting == 0
    assert not (tmp_path / "state" / PENDING_FILE).read_text()
    assert_all_logged(uri, writer)
    # The first send (the experiment) was in flight; the 12 epoch logs behind it went as 3 batches.
    assert len(sends) < len(ops)
    assert sum(op["op"] == "log" for op in sends) == len(TRIALS)


def test_a_driver_that_dies_before_its_sender_sent_loses_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = tmp_path / "state"
    writer = TrackingWriter(tracking_uri=uri, state_dir=state, search_name="s")
    ops = search_ops()
    for op in ops[:5]:  # the experiment and the runs reach MLflow
        writer.record(op)
    blocked = threading.Event()

    def hung(op, first_attempt=False):  # the sender hangs mid-send...
        blocked.wait(timeout=30)
        raise ConnectionError("the process is gone")  # (the test's end: the thread gives up)

    writer.apply = hung
    Sender.start(writer)
    for op in ops[5:]:
        writer.record(op)
    writer.sender.stop = lambda: None  # ...and the process is killed: nothing more is sent
    assert len((state / PENDING_FILE).read_text().splitlines()) == len(ops) - 5

    survivor = TrackingWriter(tracking_uri=uri, state_dir=state, search_name="s")  # `tuner resume`
    assert survivor.close() == []
    blocked.set()
    assert_all_logged(uri, survivor)


def test_a_merged_write_mlflow_refuses_is_retried_one_by_one_and_only_the_bad_one_set_aside(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = tmp_path / "state"
    writer = TrackingWriter(tracking_uri=uri, state_dir=state, search_name="s")
    for op in search_ops()[:3]:
        writer.record(op)
    release = threading.Event()
    apply = writer.apply
    writer.apply = lambda op, first_attempt=False: release.wait(30) and apply(op, first_attempt=first_attempt)
    Sender.start(writer)
    writer.record({"op": "status", "target": "t0", "status": "RUNNING"})  # in flight while the rest queue
    writer.record(log("t0", 1))
    writer.record({"op": "log", "target": "t0", "params": {"lr": "0.2"}})  # MLflow never changes a param
    writer.record(log("t0", 2))
    release.set()
    writer.close()

    rejected = [json.loads(line) for line in (state / REJECTED_FILE).read_text().splitlines()]
    assert [r["params"] for r in rejected] == [{"lr": "0.2"}]
    client = MlflowClient(uri)
    run = client.get_run(writer.run_id("t0"))
    assert run.data.params["lr"] == "0.1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]


@pytest.mark.parametrize("stop_first", [False, True])
def test_interpreter_exit_sends_what_is_left(tmp_path, stop_first):
    """A driver that ends without Ray's end-of-experiment hook: the exit hook stops the thread and
    sends the rest (a stopped sender leaves its exit hook unregistered)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    writer = TrackingWriter(tracking_uri=uri, state_dir=tmp_path / "state", search_name="s")
    sender = Sender.start(writer)
    release = threading.Event()
    apply = writer.apply
    writer.apply = lambda op, first_attempt=False: release.wait(30) and apply(op, first_attempt=first_attempt)
    for op in search_ops():
        writer.record(op)
    release.set()
    if stop_first:
        sender.stop()
        writer.flush()
    sender._at_exit()
    assert writer.waiting == 0
    assert_all_logged(uri, writer)
