"""The numbers behind the report's figures, computed from ``SearchData``.

Kept apart from the drawing so that tests check exactly what a figure shows: the best-so-far series,
the worker slots of the timeline and their idle time.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Optional

from tuner.report.data import TrialData


@dataclass(frozen=True)
class ProgressPoint:
    """One reported epoch of any trial, in the order the search saw them."""

    time_s: float  # since the search started
    epochs: int  # epochs consumed by all trials so far, this one included
    value: float  # this epoch's metric
    best: float  # the best metric of the search so far


@dataclass(frozen=True)
class Bar:
    slot: int  # row of the timeline, from 0
    trial: str
    status: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Timeline:
    bars: list[Bar]  # one per trial, in start order
    slots: int
    span_s: float  # first trial start to last trial end
    idle_fraction: Optional[float]  # of slots x span; None when there is no span to measure
    # The share of slots x span spent in the trials' own epochs (train + validation): what the rest
    # of a trial's time (process start, data and model set-up, checkpoints, reports) leaves.
    utilisation: Optional[float] = None


def better(mode: str):
    return max if mode == "max" else min


def progress(trials: list[TrialData], mode: str) -> list[ProgressPoint]:
    """Best-so-far against wall time and against the epochs spent: how fast the search found its
    best, in the two currencies a budget is set in."""
    events = sorted((p.time_s, t.start_s, p.epoch, p.value) for t in trials for p in t.curve)
    points: list[ProgressPoint] = []
    pick = better(mode)
    for consumed, (time_s, _, _, value) in enumerate(events, 1):
        best = value if not points else pick(points[-1].best, value)
        points.append(ProgressPoint(time_s, consumed, value, best))
    return points


def timeline(trials: list[TrialData]) -> Timeline:
    """Trials laid on worker slots by interval partitioning: in start order, each takes the slot
    that freed up first, or a new one when all are busy (as few rows as trials ever overlapped).
    The idle fraction is the share of slot time that ran no trial: driver overhead, Ray start-up,
    waiting for the sampler. The utilisation is the share spent in the trials' epochs themselves."""
    busy: list[tuple[float, int]] = []  # (end, slot) of every slot's latest trial
    bars: list[Bar] = []
    for trial in sorted(trials, key=lambda t: t.start_s):
        if busy and busy[0][0] <= trial.start_s:
            _, slot = heapq.heappop(busy)
        else:
            slot = len(busy)
        heapq.heappush(busy, (trial.end_s, slot))
        bars.append(Bar(slot, trial.trial, trial.status, trial.start_s, trial.end_s))
    if not bars:
        return Timeline([], 0, 0.0, None)
    slots = len(busy)
    span = max(b.end_s for b in bars) - min(b.start_s for b in bars)
    used = sum(b.end_s - b.start_s for b in bars)
    idle = 1 - used / (slots * span) if span > 0 else None
    compute = sum(t.compute_s for t in trials)
    utilisation = compute / (slots * span) if span > 0 else None
    return Timeline(bars, slots, span, idle, utilisation)
