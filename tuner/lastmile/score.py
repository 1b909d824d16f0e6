"""``tuner score``: a submission CSV against an answer key, the way the competition scores it."""

from __future__ import annotations

import csv
from pathlib import Path

from trainables import csvsafe
from tuner.errors import UserError


def score_submission(submission: str | Path, answer_key: str | Path) -> tuple[float, int]:
    """Top-1 accuracy of an ``id,predicted`` CSV against an ``id,label`` key: (accuracy, rows scored)."""
    with open(answer_key, newline="") as handle:
        truth = {row["id"]: row["label"] for row in csv.DictReader(handle)}
    with open(submission, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or set(rows[0]) != {"id", "predicted"}:
        raise UserError(f"{submission}: expected the columns id,predicted")
    # `tuner predict` escapes a name that would run as a formula ('=x); the key holds the name itself.
    hits = sum(truth.get(csvsafe.unescape(row["id"])) == csvsafe.unescape(row["predicted"]) for row in rows)
    return hits / max(len(truth), 1), len(rows)
