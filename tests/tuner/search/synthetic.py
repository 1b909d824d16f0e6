"""A trainable with a known answer, for running the REAL search path (spec -> our OptunaSearch ->
ConcurrencyLimiter -> the real scheduler -> MLflow callback) in seconds.

Its val_acc rises with the epoch towards a ceiling set by how far ``lr`` is from 0.05 (log scale);
``momentum`` matters a little, nothing else does. It writes one file per trial start and end in
``$TUNER_TEST_EVENTS/events`` (Ray's workers inherit the driver's environment as it was at
``ray.init``), so tests can see which trials overlapped; ``$TUNER_TEST_EVENTS/hold``, read at each
trial start, may hold "N:T:S": wait until N trials run at once or all T have started (at most S
seconds), so that overlaps show whenever Ray allows them. A trial with
``weight_decay`` >= 0.5 raises, a planted crash.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path

EVENTS_ENV = "TUNER_TEST_EVENTS"


def events_dir() -> Path:
    return Path(os.environ[EVENTS_ENV]) / "events"


def set_hold(root: Path, running: int = 0, total: int = 0, seconds: float = 30) -> None:
    """Before a search: each trial waits until ``running`` trials run at once or all ``total``
    have started (0: no wait)."""
    (root / "hold").write_text(f"{running}:{total}:{seconds}" if running else "")
    events = root / "events"
    events.mkdir(exist_ok=True)
    for old in events.iterdir():
        old.unlink()


def quality(config: dict) -> float:
    distance = abs(math.log10(config["lr"]) - math.log10(0.05))
    return max(0.1, 0.9 - 0.3 * distance) + 0.02 * (config.get("momentum", 0.9) - 0.9)


def _event(kind: str, trial: str) -> None:
    with open(events_dir() / f"{trial}.{kind}", "w") as handle:
        json.dump({"trial": trial, "kind": kind, "time": time.time()}, handle)


def _hold() -> None:
    hold = (Path(os.environ[EVENTS_ENV]) / "hold").read_text().strip()
    if not hold:
        return
    running, total, seconds = hold.split(":")
    deadline = time.time() + float(seconds)
    folder = events_dir()
    while time.time() < deadline:
        started, ended = len(list(folder.glob("*.start"))), len(list(folder.glob("*.end")))
        if started - ended >= int(running) or started >= int(total):
            break
        time.sleep(0.05)
    time.sleep(0.5)  # then stay a little, so that a fifth trial would show up as an overlap


def synthetic_trial(config: dict) -> None:
    from ray import tune  # a test trainable run by Ray workers

    trial = uuid.uuid4().hex[:8]
    _event("start", trial)
    try:
        _hold()
        if config.get("weight_decay", 0.0) >= 0.5:
            raise RuntimeError("planted crash")
        epochs = int(config.get("epochs", 3))
        for epoch in range(1, epochs + 1):
            value = quality(config) * (0.5 + 0.5 * epoch / epochs)
            tune.report({"val_acc": value, "val_loss": 1 - value, "epoch": epoch,
                         "status": "completed" if epoch == epochs else "running"})
    finally:
        _event("end", trial)


def max_overlap(root: Path) -> int:
    """The most trials that were running at one moment, from their start/end events."""
    changes = []
    for path in (root / "events").iterdir():
        event = json.loads(path.read_text())
        changes.append((event["time"], 1 if event["kind"] == "start" else -1))
    running = best = 0
    for _, change in sorted(changes, key=lambda c: (c[0], c[1])):  # an end before a start at a tie
        running += change
        best = max(best, running)
    return best


def start_ray_session(events: Path, **resources) -> None:
    """A local Ray whose workers run ``synthetic_trial`` and write their events under ``events``.
    ``resources``: Ray's logical ``num_cpus``/``num_gpus`` (what it schedules, not the hardware)."""
    import sys

    import ray

    os.environ[EVENTS_ENV] = str(events)
    set_hold(events)
    # Workers must unpickle the test trainable without this test package on their path.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False,
             **resources)


def stop_ray_session() -> None:
    import ray

    ray.shutdown()
    os.environ.pop(EVENTS_ENV, None)
