"""Seed by seed: does a candidate reach the target sooner than the default?

A median curve hides how often a candidate wins: two methods can differ by 10 epochs at the median
and each win on half the seeds. Every method of a result file ran the same seeds, so each seed is a
pair: the candidate reached the target sooner, later, or at the same epoch (a tie; also when
neither reached it). The exact two-sided sign test on the untied pairs says how surprising the
split would be if neither method were better. Several result files (e.g. the tuning seeds 0-19 and
40-59) are pooled: each file's target is its own random + FIFO final median unless ``target`` is
given.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from bench.curves.metrics import epochs_to_reach


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign test: P(a split at least this uneven | each untied pair is a coin flip)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _epochs(row: dict, target: float) -> float:
    reached = epochs_to_reach([float("nan") if x is None else x for x in row["curve"]], target)
    return math.inf if reached is None else reached


def compare(results: Sequence[dict], candidate: str, reference: str = "default",
            target: Optional[float] = None) -> dict:
    """Pairs ``candidate`` with ``reference`` seed by seed over every result file that ran both."""
    sooner, later, ties, seeds = 0, 0, 0, []
    for result in results:
        methods = result["methods"]
        if candidate not in methods or reference not in methods:
            continue
        goal = result["target"] if target is None else target
        theirs = {row["seed"]: row for row in methods[reference]["per_seed"]}
        for row in methods[candidate]["per_seed"]:
            if row["seed"] not in theirs:
                continue
            mine, other = _epochs(row, goal), _epochs(theirs[row["seed"]], goal)
            sooner += mine < other
            later += mine > other
            ties += mine == other
            seeds.append({"seed": row["seed"], "candidate": None if math.isinf(mine) else int(mine),
                          "reference": None if math.isinf(other) else int(other)})
    return {"candidate": candidate, "reference": reference, "sooner": sooner, "later": later, "ties": ties,
            "sign_test_p": round(sign_test_p(sooner, later), 4), "per_seed": seeds}
