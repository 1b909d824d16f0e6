"""The compiled search space: conditional parameters, seeded samplers, grids, truthful outcomes."""

from __future__ import annotations

import optuna
import pytest

from tuner.search.searcher import optuna_outcome
from tuner.search.samplers import build_sampler
from tuner.search.space import define_by_run, grid_points
from tuner.spec import parse_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_spec(tmp_path, space: dict, sampler: str = "tpe", seed: int = 0):
    return parse_spec(
        {
            "name": "s",
            "data": {"train": str(tmp_path), "val": str(tmp_path)},
            "space": space,
            "sampler": {"name": sampler, "seed": seed},
        },
        source="s.yaml",
    )


CONDITIONAL = {
    "lr": {"loguniform": [0.001, 1.0]},
    "arch": {"choice": ["resnet18", "densenet121"]},
    "width": {"choice": [0.5, 1.0, 2.0], "when": {"arch": ["resnet18"]}},
    "growth_rate": {"choice": [12, 32], "when": {"arch": ["densenet121"]}},
}


def run_study(spec, n: int) -> list[dict]:
    sampler = build_sampler(spec.sampler.name, space=spec.space, seed=spec.sampler.seed,
                            options=spec.sampler.options, max_concurrent=spec.budget.max_concurrent)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    space = define_by_run(spec.space)
    for i in range(n):
        trial = study.ask()
        space(trial)
        try:
            study.tell(trial, float(i % 3))
        except RuntimeError:  # GridSampler stops the study once the grid is done (as under Ray)
            pass
    return [t.params for t in study.trials]


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_conditional_parameters_appear_only_when_their_condition_holds(tmp_path, sampler):
    params = run_study(make_spec(tmp_path, CONDITIONAL, sampler), 30)
    assert {p["arch"] for p in params} == {"resnet18", "densenet121"}
    for p in params:
        assert ("width" in p) == (p["arch"] == "resnet18")
        assert ("growth_rate" in p) == (p["arch"] == "densenet121")


@pytest.mark.parametrize("sampler", ["tpe", "random", "qmc", "cmaes"])
def test_same_seed_gives_the_same_first_configurations(tmp_path, sampler):
    space = {"lr": {"loguniform": [0.001, 1.0]}, "momentum": {"uniform": [0.5, 0.99]}}
    first = run_study(make_spec(tmp_path, space, sampler, seed=7), 12)
    again = run_study(make_spec(tmp_path, space, sampler, seed=7), 12)
    other = run_study(make_spec(tmp_path, space, sampler, seed=8), 12)
    assert first == again
    assert first != other


def test_grid_points_respect_conditions(tmp_path):
    spec = make_spec(tmp_path, {
        "lr": {"grid": [2.0**-k for k in range(0, 13)]},  # the journal's 2^0 .. 2^-12
        "arch": {"grid": ["resnet18", "densenet121"]},
        "width": {"grid": [1, 2], "when": {"arch": ["resnet18"]}},
    }, "grid")
    points = grid_points(spec.space)
    assert len(points) == 13 * (2 + 1)
    assert all(("width" in p) == (p["arch"] == "resnet18") for p in points)


def test_unconditional_grid_uses_optunas_grid_sampler_exhaustively(tmp_path):
    spec = make_spec(tmp_path, {"lr": {"grid": [0.1, 0.01, 0.001]}, "optimizer": {"choice": ["sgd", "adam"]}}, "grid")
    params = run_study(spec, 6)
    assert sorted((p["lr"], p["optimizer"]) for p in params) == sorted(
        (lr, o) for lr in (0.1, 0.01, 0.001) for o in ("sgd", "adam"))


@pytest.mark.parametrize("result, error, expected", [
    ({"val_acc": 0.5, "status": "completed"}, False, (optuna.trial.TrialState.COMPLETE, 0.5)),
    ({"val_acc": 0.4, "status": "converged"}, False, (optuna.trial.TrialState.COMPLETE, 0.4)),
    ({"val_acc": 0.3, "status": "running"}, False, (optuna.trial.TrialState.PRUNED, None)),
    ({"val_acc": 0.0, "status": "diverged"}, False, (optuna.trial.TrialState.FAIL, None)),
    ({"val_acc": 0.3, "status": "running"}, True, (optuna.trial.TrialState.FAIL, None)),
    (None, True, (optuna.trial.TrialState.FAIL, None)),
])
def test_optuna_is_told_how_a_trial_really_ended(result, error, expected):
    assert optuna_outcome(result, error=error, metric="val_acc") == expected
