"""The simulated clock of replayed searches, driven directly on an event loop (no Ray): it lets
epochs through in simulated-time order, only once every slot is waiting, and holds the budget."""

from __future__ import annotations

import asyncio

from bench.curves.virtual_clock import VirtualClock


async def _settle():
    for _ in range(5):  # let the dispatcher and the released waiters run
        await asyncio.sleep(0)


def test_epochs_go_in_simulated_order_and_only_once_every_slot_waits():
    async def scenario():
        clock = VirtualClock(slots=2, max_trials=10, budget=None)
        slow = asyncio.create_task(clock.turn("slow", 3.0, "a", False))
        await _settle()
        assert not slow.done()  # one slot of two is waiting: the other's epoch may end sooner
        fast = asyncio.create_task(clock.turn("fast", 1.0, "b", False))
        await _settle()
        assert fast.done() and not slow.done()
        assert fast.result() == {"t": 1.0, "seq": 1}
        # "fast" asks for its next epoch (1.5 s more: it ends at 2.5, before "slow" at 3.0).
        again = asyncio.create_task(clock.turn("fast", 1.5, "b", False))
        await _settle()
        assert again.result() == {"t": 2.5, "seq": 2} and not slow.done()
        # "fast" was stopped by the scheduler; its replacement starts now (2.5) and ends at 3.5.
        late = asyncio.create_task(clock.turn("new", 1.0, "c", False))
        await _settle()
        assert slow.result() == {"t": 3.0, "seq": 3} and not late.done()
        clock._close()
        await _settle()
        assert late.result() is None
    asyncio.run(scenario())


def test_ties_in_simulated_time_go_by_the_tiebreak_not_by_arrival():
    async def scenario():
        clock = VirtualClock(slots=2, max_trials=10, budget=None)
        second = asyncio.create_task(clock.turn("x", 2.0, "z-params", False))
        await _settle()
        first = asyncio.create_task(clock.turn("y", 2.0, "a-params", False))
        await _settle()
        assert first.done() and not second.done()
        clock._close()
        await _settle()
    asyncio.run(scenario())


def test_the_budget_releases_every_waiting_trial_without_a_turn():
    async def scenario():
        clock = VirtualClock(slots=2, max_trials=10, budget=1)
        a = asyncio.create_task(clock.turn("a", 1.0, "a", False))
        b = asyncio.create_task(clock.turn("b", 2.0, "b", False))
        await _settle()
        assert a.result() == {"t": 1.0, "seq": 1} and not b.done()
        a2 = asyncio.create_task(clock.turn("a", 5.0, "a", False))
        await _settle()
        assert b.result() is None and a2.result() is None  # the budget of one epoch is spent
        assert await clock.turn("c", 1.0, "c", False) is None and clock.stats()["released"] == 1
    asyncio.run(scenario())


def test_once_the_last_trial_started_the_trials_still_running_are_enough():
    async def scenario():
        clock = VirtualClock(slots=3, max_trials=2, budget=None, late_s=0.05)
        a = asyncio.create_task(clock.turn("a", 1.0, "a", True))  # its last epoch
        b = asyncio.create_task(clock.turn("b", 2.0, "b", False))
        await _settle()
        # Both trials there are have started: two waiting are enough (not the three slots). Once
        # "a" had its last epoch it asks no more, and "b" goes at once: nobody else can come.
        assert a.result() == {"t": 1.0, "seq": 1} and b.result() == {"t": 2.0, "seq": 2}
        # "b" continues: its next epoch starts where its last one ended, and goes without waiting.
        c = asyncio.create_task(clock.turn("b", 1.0, "b", False))
        await asyncio.sleep(0.2)
        assert c.result() == {"t": 3.0, "seq": 3}
        assert clock.stats()["late_releases"] == 0
        clock._close()
    asyncio.run(scenario())


def test_a_trial_that_never_comes_back_is_waited_for_late_s_then_the_earliest_goes():
    async def scenario():
        clock = VirtualClock(slots=2, max_trials=2, budget=None, late_s=0.05)
        a = asyncio.create_task(clock.turn("a", 1.0, "a", False))
        b = asyncio.create_task(clock.turn("b", 2.0, "b", False))
        await _settle()
        assert a.result()["seq"] == 1
        # "a" was stopped by the scheduler after its epoch: it never asks again, and no trial is
        # left to start. "b" goes after late_s, counted as a late release.
        await asyncio.sleep(0.2)
        assert b.result() == {"t": 2.0, "seq": 2} and clock.stats()["late_releases"] == 1
        clock._close()
    asyncio.run(scenario())
