"""The replay trainable inside the REAL search path (spec -> our OptunaSearch -> ConcurrencyLimiter ->
scheduler): every trial reports exactly the surrogate's curve for the configuration it was given,
and the epoch budget ends the work of a search. One Ray session, one search of 3 trials."""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict

import numpy as np
import pytest
import ray

from bench.curves.methods import Bench, bench_spec, real_driver
from bench.curves.replay import DIVERGED, EpochBudget, prepare_driver, replay_epochs
from bench.curves.surrogate import Surrogate
from tests.bench import synthetic_curves as syn


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    before = os.environ.get("TUNE_DISABLE_STRICT_METRIC_CHECKING")
    prepare_driver()
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    raw_spec = {"name": "replay", "data": {"train": ".", "val": "."}, "space": syn.SPACE,
                "fixed": {"epochs": syn.EPOCHS}}
    yield Bench(Surrogate.fit(*syn.recording(30, 4), tune_metric=False), raw_spec, budget_epochs=20,
                concurrency=2, time_factor=0.0, work=tmp_path_factory.mktemp("replay"))
    ray.shutdown()
    if before is None:
        os.environ.pop("TUNE_DISABLE_STRICT_METRIC_CHECKING", None)


def test_a_ray_search_of_three_trials_reports_the_surrogates_curves_within_the_budget(bench):
    # 3 trials x 8 epochs are asked for; the budget pays for 20 epochs: the third trial is cut short.
    spec = bench_spec(bench, 5, "replay-fifo", sampler={"name": "random"}, scheduler={"name": "fifo"},
                      priors=False, num_samples=3)
    run = real_driver(bench, 5, spec)
    assert run.trials == 3 and run.notes["errors"] == 0
    by_trial = defaultdict(list)
    for event in run.events:
        by_trial[event["trial"]].append(event)
    assert len(by_trial) == 3 and len(run.events) == 20
    # Two trials at a time on the simulated clock: the budget cuts short whichever trials' epochs
    # end last in recorded seconds; the 4 epochs it refuses are the same either way.
    lengths = sorted(len(e) for e in by_trial.values())
    assert sum(8 - n for n in lengths) == 4 and lengths[-1] == 8 and lengths[0] >= 1, lengths
    for events in by_trial.values():
        expected = bench.surrogate.sample(events[0]["params"], 5).val_acc[: len(events)]
        assert [e["epoch"] for e in events] == list(range(1, len(events) + 1))
        np.testing.assert_allclose([e["val_acc"] for e in events], expected)
    assert [e["t"] for e in run.events] == sorted(e["t"] for e in run.events)
    assert [e["seq"] for e in run.events] == list(range(1, 21))
    assert run.notes["clock"]["released"] == 20 and run.notes["clock"]["late_releases"] == 0


def test_the_same_seed_replays_the_same_search_epoch_for_epoch(bench):
    # TPE + ASHA, 2 at once: what ASHA stops and what TPE has seen when it suggests depend on the
    # order of reports. On the simulated clock that order comes from the recorded seconds alone,
    # so two runs are the same search, whatever the machine's load did to Ray's processes.
    def one_run():
        spec = bench_spec(bench, 7, "replay-repeat", sampler={"name": "tpe", "options": {"n_startup_trials": 3}},
                          scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
                          priors=False, num_samples=12)
        run = real_driver(bench, 7, spec)
        return [(e["epoch"], e["val_acc"], e["params"]["lr"]) for e in run.events], run

    first, run = one_run()
    second, _ = one_run()
    assert len(first) == 20 and run.trials > 20 // syn.EPOCHS + 1  # ASHA stopped some trials early
    assert first == second


def test_the_wall_clock_replay_still_spends_exactly_the_budget(bench):
    # --clock wall: epochs sleep instead of taking turns; the order is the wall clock's.
    wall = dataclasses.replace(bench, clock="wall")
    spec = bench_spec(wall, 5, "replay-wall", sampler={"name": "random"}, scheduler={"name": "fifo"},
                      priors=False, num_samples=3)
    run = real_driver(wall, 5, spec)
    assert len(run.events) == 20 and "clock" not in run.notes
    assert all("seq" not in e for e in run.events)
    assert [e["t"] for e in run.events] == sorted(e["t"] for e in run.events)


def test_the_search_ends_when_its_epoch_budget_is_spent(bench):
    # 10 trials of 8 epochs are asked for, the budget pays for 20 epochs: once it is spent the
    # stopper ends the search, so the surplus trials are never launched (each costs a process).
    spec = bench_spec(bench, 6, "replay-stop", sampler={"name": "random"}, scheduler={"name": "fifo"},
                      priors=False, num_samples=10)
    run = real_driver(bench, 6, spec)
    assert len(run.events) == 20
    assert run.trials <= 4, run.trials  # 2 at once: 3 trials pay for 20 epochs, a 4th may have started


def test_budget_counter(tmp_path):
    budget = EpochBudget(tmp_path / "b", 2)
    assert [budget.take() for _ in range(3)] == [True, True, False]
    assert budget.spent() and EpochBudget(tmp_path / "none", None).take()


def test_a_diverging_neighbourhood_replays_as_diverged():
    metadata, curves = syn.recording(12, 0)
    for curve in curves:  # every recorded run with lr above 0.05 diverged in its third epoch
        if curve.params["lr"] > 0.05:
            curve.status = "diverged"
            curve.epochs = {k: v[:3] for k, v in curve.epochs.items()}
    model = Surrogate.fit(metadata, curves, tune_metric=False)
    high = next(c.params for c in curves if c.params["lr"] > 0.05)
    reports = list(replay_epochs(model, high, seed=0, epochs=syn.EPOCHS))
    assert len(reports) == 3 and reports[-1]["status"] == DIVERGED and reports[-1]["final"]
