"""bench/tracking_latency.py's measurement on a SQLite store: a search's hooks, every epoch in MLflow
afterwards, whether the writes went from the loop or from the sender thread."""

from __future__ import annotations

import pytest

from bench.tracking_latency import measure


@pytest.mark.parametrize("sender", [False, True])
def test_the_measured_search_reaches_mlflow_whole(tmp_path, sender):
    data = tmp_path / "data" / "class_a"
    data.mkdir(parents=True)
    (data / "x.jpg").write_bytes(b"x")
    row = measure(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, "latency", sender=sender, trials=5,
                  epochs=3, concurrency=2, gap_s=0.0, data=tmp_path / "data")
    assert row["mode"] == ("sender" if sender else "sync")
    assert row["all_epochs_in_mlflow"]
    assert row["calls"] == 5 * (1 + 3 + 1)  # each trial: start, 3 results, complete
    # Each trial: create (params go with it), 3 epoch logs, end tags; the search: its summary.
    assert row["operations"] >= 5 * 5 and 0 < row["log_batch_requests"] <= row["operations"]
    assert row["loop_ms_median"] <= row["loop_ms_p95"] <= row["loop_ms_max"]
