"""bench/slot_utilisation.py's arithmetic: what counts as busy slot time, start-up and epoch gaps."""

from __future__ import annotations

import pytest

from bench.slot_utilisation import (TrialTimes, busy_fraction, driver_cpu, epoch_gaps, slot_metrics,
                                    startup_seconds)


def trial(name: str, start: float, epochs: list[tuple[float, float]]) -> TrialTimes:
    """A trial whose epochs compute over the given (begin, end) intervals."""
    return TrialTimes(name, start, reports=[(end, end - begin) for begin, end in epochs])


def test_two_slots_busy_but_for_start_ups_and_gaps():
    # Slot 1: a trial started at 0, computing 1-4 and 5-8. Slot 2: started at 2, computing 2.5-6.
    # The last launch is at 6 (a third trial in slot 2, computing 7-9).
    trials = [trial("a", 0.0, [(1, 4), (5, 8)]), trial("b", 2.0, [(2.5, 6)]), trial("c", 6.0, [(7, 9)])]
    # Steady window [0, 6]: a computes 1-4 and 5-6 (4 s), b 2.5-6 (3.5 s): 7.5 of 12 slot-seconds.
    assert busy_fraction(trials, (0.0, 6.0), slots=2) == pytest.approx(7.5 / 12)
    assert startup_seconds(trials[0]) == pytest.approx(1.0) and startup_seconds(trials[1]) == pytest.approx(0.5)
    assert epoch_gaps(trials[0]) == [pytest.approx(1.0)] and epoch_gaps(trials[1]) == []
    metrics = slot_metrics(trials, slots=2, end=10.0)
    assert metrics["slot_utilisation"] == pytest.approx(7.5 / 12, abs=1e-4)
    # Drain [6, 10]: a computes 6-8, c 7-9: 4 of 8 slot-seconds.
    assert metrics["drain_utilisation"] == pytest.approx(0.5)
    assert metrics["search_utilisation"] == pytest.approx((3 + 3 + 3.5 + 2) / 20)
    assert metrics["epochs"] == 4 and metrics["epoch_compute_s"] == pytest.approx(11.5)
    assert metrics["startup_s"]["max"] == pytest.approx(1.0) and metrics["steady_span_s"] == 6.0


def test_a_trial_without_reports_has_no_start_up_and_an_empty_window_no_fraction():
    silent = TrialTimes("x", 3.0)
    assert startup_seconds(silent) is None and epoch_gaps(silent) == []
    assert busy_fraction([silent], (3.0, 3.0), slots=2) is None


def test_driver_cpu_splits_the_set_up_from_the_work_while_trials_run():
    # 4 s before the first trial (stores, Tuner), 3 s while 10 trials ran (0.5 of it suggesting),
    # 1 s after the last one ended.
    split = driver_cpu(10.0, 14.0, 17.0, 18.0, suggest_cpu=0.5, trials=10)
    assert split == {"driver_cpu_s_per_trial": 0.75, "driver_cpu_s_total": 8.0, "driver_setup_cpu_s": 4.0,
                     "driver_teardown_cpu_s": 1.0, "driver_cpu_s_per_trial_running": 0.25}
