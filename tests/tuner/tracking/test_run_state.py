"""The tracking callback's run-id state: a snapshot plus an append-only journal of trial entries.

A result used to rewrite every trial's entry (O(trials) per result); now it appends one line. What
must hold: a new driver reads back exactly what the old one saved, a line torn by a killed driver is
dropped without swallowing the next one, lines older than the snapshot never overwrite it, and the
journal is folded into the snapshot now and then.
"""

from __future__ import annotations

import json

from tuner.tracking import buffer
from tuner.tracking.buffer import TrackingWriter
from tuner.tracking.run_state import STATE_FILE, TRIALS_JOURNAL, load_run_state

URI = "sqlite:///unused.db"  # the client is never opened here: only the state files are


def writer_with_trials(state_dir, count: int) -> TrackingWriter:
    writer = TrackingWriter(tracking_uri=URI, state_dir=state_dir, search_name="s")
    writer.state["parent_run_id"] = "p"
    writer.save_state()
    for i in range(count):
        writer.state["trials"][f"t{i}"] = {"run_id": f"r{i}", "last_step": 0, "best": None}
        writer.save_trial(f"t{i}")
    return writer


def test_a_result_appends_one_line_whatever_the_number_of_trials(tmp_path):
    writer = writer_with_trials(tmp_path, 300)
    snapshot = (tmp_path / STATE_FILE).read_text()
    journal = tmp_path / TRIALS_JOURNAL
    before = journal.stat().st_size
    writer.state["trials"]["t7"].update(last_step=1, best=0.25)
    writer.save_trial("t7")
    added = journal.read_text()[before:]
    assert added.count("\n") == 1 and len(added) < 200  # one short line, not 300 entries
    assert (tmp_path / STATE_FILE).read_text() == snapshot  # the snapshot is left alone
    state = load_run_state(tmp_path)
    assert state["trials"]["t7"] == {"run_id": "r7", "last_step": 1, "best": 0.25}
    assert len(state["trials"]) == 300 and state["parent_run_id"] == "p"


def test_a_new_driver_reads_back_the_same_state_and_folds_the_journal(tmp_path):
    first = writer_with_trials(tmp_path, 5)
    second = TrackingWriter(tracking_uri=URI, state_dir=tmp_path, search_name="s")
    assert second.state["trials"] == first.state["trials"]
    assert (tmp_path / TRIALS_JOURNAL).read_text() == ""
    assert json.loads((tmp_path / STATE_FILE).read_text())["trials"] == first.state["trials"]


def test_a_torn_last_line_is_dropped_and_the_next_append_stands_alone(tmp_path):
    writer_with_trials(tmp_path, 2)
    with open(tmp_path / TRIALS_JOURNAL, "a") as journal:  # killed mid-write
        journal.write('{"generation": 1, "trial": "t1", "entry": {"run_id": "r1", "last_st')
    resumed = TrackingWriter(tracking_uri=URI, state_dir=tmp_path, search_name="s")
    assert resumed.state["trials"]["t1"] == {"run_id": "r1", "last_step": 0, "best": None}
    resumed.state["trials"]["t1"]["last_step"] = 2
    resumed.save_trial("t1")
    assert load_run_state(tmp_path)["trials"]["t1"]["last_step"] == 2


def test_lines_older_than_the_snapshot_are_ignored(tmp_path):
    writer = writer_with_trials(tmp_path, 1)
    stale = (tmp_path / TRIALS_JOURNAL).read_text()
    writer.state["trials"]["t0"]["last_step"] = 3
    writer.save_state()  # a new generation; then the driver dies before emptying the journal
    (tmp_path / TRIALS_JOURNAL).write_text(stale)
    assert load_run_state(tmp_path)["trials"]["t0"]["last_step"] == 3


def test_the_journal_is_folded_into_the_snapshot_after_enough_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(buffer, "COMPACT_AFTER", 3)
    writer_with_trials(tmp_path, 5)  # t0-t2 appended; t3 folds all four into the snapshot; t4 appended
    assert (tmp_path / TRIALS_JOURNAL).read_text().count("\n") == 1
    snapshot = json.loads((tmp_path / STATE_FILE).read_text())
    assert sorted(snapshot["trials"]) == [f"t{i}" for i in range(4)]
    assert sorted(load_run_state(tmp_path)["trials"]) == [f"t{i}" for i in range(5)]
