"""Compiles a SearchSpec's parameters into an Optuna define-by-run function, and enumerates grids.

The function only calls ``trial.suggest_*``: a parameter whose ``when`` condition does not hold is
never suggested, so Optuna sees truly conditional spaces (width exists only for resnets).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import optuna

from tuner.spec.space import Param


def condition_holds(param: Param, chosen: dict[str, Any]) -> bool:
    return all(chosen.get(parent) in allowed for parent, allowed in param.when)


def suggest(trial: optuna.Trial, param: Param) -> Any:
    if param.kind in ("choice", "grid"):
        return trial.suggest_categorical(param.name, list(param.choices))
    if param.kind == "int":
        step = int(param.step or 1)
        return trial.suggest_int(param.name, int(param.low), int(param.high), step=step, log=param.log)
    return trial.suggest_float(param.name, param.low, param.high, log=param.log, step=param.step)


class DefineByRun:
    """The define-by-run space function (a class, not a closure: Ray pickles the searcher)."""

    def __init__(self, params: tuple[Param, ...]) -> None:
        self.params = params

    def __call__(self, trial: optuna.Trial) -> None:
        chosen: dict[str, Any] = {}
        for param in self.params:
            if condition_holds(param, chosen):
                chosen[param.name] = suggest(trial, param)


def define_by_run(params: tuple[Param, ...]) -> Callable[[optuna.Trial], None]:
    return DefineByRun(params)


def grid_points(params: tuple[Param, ...]) -> list[dict[str, Any]]:
    """Every combination of the choice/grid options that the conditions allow (for the grid sampler)."""
    points: list[dict[str, Any]] = [{}]
    for param in params:
        grown = []
        for point in points:
            if condition_holds(param, point):
                grown.extend({**point, param.name: option} for option in param.choices)
            else:
                grown.append(point)
        points = grown
    unique = {tuple(sorted(p.items(), key=lambda kv: kv[0])): p for p in points}
    return list(unique.values())


def grid_size(params: tuple[Param, ...]) -> int:
    return len(list(itertools.islice(grid_points(params), 10**6)))
