"""Which queued MLflow writes may go as one request: a run's log operations merged into one
``log_batch``, without changing the order of that run's writes."""

from __future__ import annotations

from typing import Any


def coalesced(ops: list[dict]) -> list[list[dict]]:
    """``ops`` in sending order, as groups: a log operation with the later log operations of the
    same run that no other operation of that run separates from it; any other operation alone.
    Runs are independent in MLflow, so only each run's own order must be (and is) kept."""
    groups: list[list[dict]] = []
    open_log: dict[Any, list[dict]] = {}  # target -> its log group still accepting operations
    for op in ops:
        target = op.get("target")
        if op["op"] == "log":
            if target in open_log:
                open_log[target].append(op)
                continue
            open_log[target] = [op]
            groups.append(open_log[target])
        else:
            open_log.pop(target, None)
            groups.append([op])
    return groups


def merge_logs(group: list[dict]) -> dict:
    """One log operation with the metrics of ``group`` and its params and tags (later wins)."""
    merged: dict = {"op": "log", "target": group[0]["target"], "metrics": [], "params": {}, "tags": {}}
    for op in group:
        merged["metrics"].extend(op.get("metrics", []))
        merged["params"].update(op.get("params", {}))
        merged["tags"].update(op.get("tags", {}))
    return merged
