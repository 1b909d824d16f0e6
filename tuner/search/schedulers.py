"""Scheduler registry: name -> how to build the Ray Tune trial scheduler and the options it takes.

A spec writes a scheduler flat, ``scheduler: {name: asha, grace_period: 2, reduction_factor: 3}``;
every key but ``name`` is an option of the entry, checked by the spec parser against ``options``.
Trials report once per epoch, so every time attribute is ``training_iteration`` = epochs.

Builders import Ray inside themselves: the spec parser reads this registry, and ``tuner train`` /
the diagnostics parse specs without Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tuner.search.options import Option
from trainables.registry import Registry


@dataclass(frozen=True)
class SchedulerBuild:
    metric: str
    mode: str
    epochs: int  # every trial's full length (max_t)
    options: dict
    points: tuple = ()  # the spec's points_to_evaluate
    searched: frozenset = frozenset()  # the names of the searched parameters


@dataclass(frozen=True)
class SchedulerEntry:
    build: Callable[[SchedulerBuild], Any]  # -> ray.tune.schedulers.TrialScheduler
    summary: str
    stops_early: bool  # whether trials may end before their epochs (Optuna hears PRUNED)
    options: dict = field(default_factory=dict)  # name -> Option


SCHEDULERS: Registry[SchedulerEntry] = Registry("scheduler")


def _register(name: str, **entry):
    def add(build):
        SCHEDULERS.register(name)(SchedulerEntry(build=build, **entry))
        return build
    return add


@_register(
    "asha", stops_early=True,
    summary="Asynchronous successive halving: at each rung only the top 1/reduction_factor go on",
    options={
        "grace_period": Option(int, 1, minimum=1, help="epochs before the first rung"),
        "reduction_factor": Option(float, 3, minimum=2, help="1/rf of the trials pass each rung"),
        "points_to_end": Option(bool, True, help="never stop a trial of the spec's points_to_evaluate "
                                "early: they are trusted recipes, judged at low rungs mid-schedule"),
    },
)
def _asha(b: SchedulerBuild):
    from ray.tune.schedulers import ASHAScheduler  # heavy: only when a search runs

    asha = dict(time_attr="training_iteration", metric=b.metric, mode=b.mode, max_t=b.epochs,
                grace_period=min(b.options["grace_period"], b.epochs),
                reduction_factor=b.options["reduction_factor"])
    if b.options["points_to_end"] and b.points:
        from tuner.search.points_to_end import PointsRunToTheEndASHA  # imports ray: only when a search runs

        return PointsRunToTheEndASHA(points=b.points, searched=b.searched, **asha)
    return ASHAScheduler(**asha)


@_register(
    "median", stops_early=True,
    summary="Median stopping rule: stop a trial below the median of others at the same epoch",
    options={
        "grace_period": Option(int, 1, minimum=1, help="epochs before a trial may be stopped"),
        "min_samples_required": Option(int, 3, minimum=1, help="trials needed to form a median"),
    },
)
def _median(b: SchedulerBuild):
    from ray.tune.schedulers import MedianStoppingRule  # heavy: only when a search runs

    return MedianStoppingRule(
        time_attr="training_iteration", metric=b.metric, mode=b.mode,
        grace_period=b.options["grace_period"], min_samples_required=b.options["min_samples_required"],
    )


@_register("fifo", stops_early=False, summary="No early stopping: every trial runs all its epochs")
def _fifo(b: SchedulerBuild):
    from ray.tune.schedulers import FIFOScheduler  # heavy: only when a search runs

    return FIFOScheduler()


def build_scheduler(name: str, *, metric: str, mode: str, epochs: int, options: dict,
                    points: tuple = (), searched: frozenset = frozenset()):
    """The Ray Tune scheduler of registry entry ``name`` (options already checked by the spec);
    ``points``: the spec's points_to_evaluate, ``searched``: its searched parameters' names."""
    return SCHEDULERS.get(name).build(SchedulerBuild(metric, mode, epochs, options, tuple(points),
                                                     frozenset(searched)))
