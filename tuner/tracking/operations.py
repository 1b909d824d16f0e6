"""The operations the tracking callback queues for MLflow: their rows, and how one reads to a person.

An operation is a JSON-able dict (``op``: experiment | create_run | log | status | artifacts) that
names its run by *target*: ``SEARCH_TARGET`` for the search's parent run, else a Ray trial id.
``tuner.tracking.buffer`` writes them ahead to a file and sends them; the words here are what its
warnings print for a write that is refused or still unsent.
"""

from __future__ import annotations

from typing import Any

SEARCH_TARGET = "search"


def metric_row(name: str, value: Any, timestamp_ms: int, step: int) -> list:
    """One metric of a ``log`` operation, as stored in the queue file."""
    return [name, float(value), int(timestamp_ms), int(step)]


def describe(op: dict, search_name: str) -> str:
    """One line a person can act on: whose run, and what the write holds."""
    target = op.get("target")
    who = f"search {search_name}" if target in (None, SEARCH_TARGET) else f"trial {target}"
    kind = op["op"]
    if kind == "experiment":
        return f"experiment {op['name']!r}: create or find"
    if kind == "create_run":
        return f"{who}: create run {op['run_name']!r} with {len(op.get('params', {}))} params"
    if kind == "status":
        return f"{who}: run status {op['status']}"
    if kind == "artifacts":
        return f"{who}: upload artifacts {', '.join(op.get('files', [])) or '(folder)'} from {op['dir']}"
    parts = []
    steps = sorted({m[3] for m in op.get("metrics", [])})
    if op.get("metrics"):
        names = ", ".join(sorted({m[0] for m in op["metrics"]}))
        parts.append(f"metrics {names} at step {', '.join(map(str, steps))}")
    for key in ("params", "tags"):
        if op.get(key):
            parts.append(f"{key} " + ", ".join(f"{k}={v}" for k, v in sorted(op[key].items())))
    return f"{who}: " + "; ".join(parts)
