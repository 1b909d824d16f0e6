"""A simulated clock for replayed searches: the same seed gives the same search, every run.

With wall-clock replay (each epoch sleeps its recorded seconds x a small factor) the order in which
four concurrent trials report depends on how fast Ray's processes happen to run: what ASHA stops
and what TPE has seen when it suggests change from run to run, and one method's epochs to a target
moved by +-15 % between two runs of the same seeds. Under this clock no epoch sleeps. Each trial
asks for its turn before it reports an epoch, saying how long that epoch took when it was recorded;
the clock lets one epoch through at a time, the one that ends first in simulated time, and only
once every slot is waiting (each running trial has asked, and a freed slot has its next trial).
So the driver has processed every earlier epoch -- the scheduler's decision, the searcher's next
suggestion -- before the next one is reported, exactly as in a real search whose epochs take
minutes, and the order of reports depends on the recorded seconds alone.

The clock is a Ray actor (asynchronous: waiting trials cost nothing); it also holds the epoch
budget, so that the epochs counted are the first ones in simulated time. When the budget is spent
every waiting trial is let go without a turn (and any that asks later), so no trial process is left
blocked when the search ends.
"""

from __future__ import annotations

import asyncio
from typing import Optional


class VirtualClock:
    """One search's simulated time (``ray.remote`` this class: ``start_clock``)."""

    def __init__(self, slots: int, max_trials: int, budget: Optional[int], late_s: float = 2.0,
                 stall_s: float = 120.0) -> None:
        self.slots, self.max_trials, self.budget = slots, max_trials, budget
        self.late_s, self.stall_s = late_s, stall_s
        self.now = 0.0  # simulated seconds: when the last released epoch ended
        self.released = 0
        self.waiting: dict[str, tuple] = {}  # trial -> (ends_at, tiebreak, last, future)
        self.ended_at: dict[str, float] = {}  # trial -> when its last released epoch ended
        self.started: set[str] = set()
        self.finished = 0  # trials whose last epoch was released (they ask no more)
        self.late_releases = 0  # releases made without every slot waiting (a trial was late)
        self.closed = False
        self._changed: Optional[asyncio.Event] = None
        self._dispatcher: Optional[asyncio.Task] = None

    async def turn(self, trial: str, seconds: float, tiebreak: str, last: bool) -> Optional[dict]:
        """Waits until epoch ``seconds`` long of ``trial`` is the next to end; returns its simulated
        end ``t`` and release number ``seq`` (None: the budget is spent, report nothing more)."""
        if self.closed:
            return None
        if self._dispatcher is None:  # created here: the actor's event loop runs only once called
            self._changed = asyncio.Event()
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
        future = asyncio.get_running_loop().create_future()
        self.started.add(trial)
        ends_at = self.ended_at.get(trial, self.now) + seconds
        self.waiting[trial] = (ends_at, tiebreak, last, future)
        self._changed.set()
        return await future

    def stats(self) -> dict:
        return {"released": self.released, "trials": len(self.started), "late_releases": self.late_releases,
                "simulated_s": round(self.now, 3)}

    def _expected_waiting(self) -> int:
        """How many trials must be waiting before one is let go: every slot while trials remain to
        be started (a freed slot gets one), afterwards the trials still running."""
        if len(self.started) < self.max_trials:
            return self.slots
        return min(self.slots, len(self.started) - self.finished)

    async def _dispatch(self) -> None:
        while not self.closed:
            if self.waiting and len(self.waiting) >= self._expected_waiting():
                self._release()
                continue
            self._changed.clear()
            # Once the last trial has started, a trial the scheduler stops is not replaced and
            # nobody tells the clock: after late_s without news the earliest waiting epoch goes.
            # Before that a freed slot always gets a trial, however slowly its process starts
            # (stall_s only guards against a driver that died).
            patience = self.late_s if len(self.started) >= self.max_trials else self.stall_s
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=patience)
            except asyncio.TimeoutError:
                if self.waiting:
                    self.late_releases += 1
                    self._release()

    def _release(self) -> None:
        trial = min(self.waiting, key=lambda name: self.waiting[name][:2])
        ends_at, _, last, future = self.waiting.pop(trial)
        if self.budget is not None and self.released >= self.budget:
            self._close(future)
            return
        self.released += 1
        self.now = self.ended_at[trial] = ends_at
        self.finished += bool(last)
        future.set_result({"t": round(ends_at, 4), "seq": self.released})

    def _close(self, *futures) -> None:
        self.closed = True
        for future in (*futures, *(entry[3] for entry in self.waiting.values())):
            if not future.done():
                future.set_result(None)
        self.waiting.clear()


def start_clock(slots: int, max_trials: int, budget: Optional[int], **patience):
    """A ``VirtualClock`` actor for one search (no CPU reserved: it only waits)."""
    import ray

    return ray.remote(num_cpus=0)(VirtualClock).remote(slots, max_trials, budget, **patience)
