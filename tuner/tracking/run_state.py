"""Which MLflow run is whose, kept on disk so that a resumed search continues the same runs.

A snapshot (``STATE_FILE``: the experiment, the parent run, every trial's run id and last step)
plus a journal of the trial entries changed since (``TRIALS_JOURNAL``, one JSON line each): a
result costs one short append instead of rewriting every trial's entry (a 1,000-trial search
would rewrite it ~5,000 times). ``tuner.tracking.buffer.TrackingWriter`` writes both; the journal
is folded into a new snapshot generation now and then.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STATE_FILE = "tuner_mlflow_runs.json"
TRIALS_JOURNAL = "tuner_mlflow_trials.jsonl"


def load_run_state(state_dir: Path) -> dict:
    """The run-id state of a search: the snapshot, then the journal lines of its generation (a
    torn last line, from a driver killed mid-write, is a write that never happened)."""
    state_dir = Path(state_dir)
    path = state_dir / STATE_FILE
    state = json.loads(path.read_text()) if path.is_file() else {}
    state.setdefault("trials", {})
    journal = state_dir / TRIALS_JOURNAL
    if journal.is_file():
        for line in journal.read_text().splitlines():
            try:
                change = json.loads(line)
            except json.JSONDecodeError:
                continue
            if change.get("generation") == state.get("generation"):
                state["trials"][change["trial"]] = change["entry"]
    return state


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of it (a killed driver included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(text)
    os.replace(partial, path)
