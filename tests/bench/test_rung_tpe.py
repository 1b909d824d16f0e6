"""The BOHB-style TPE's view of a study (bench/curves/rung_tpe.py), on hand-built in-memory studies."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from bench.curves.rung_tpe import BestValueTPESampler, RungTPESampler, default_min_points

optuna.logging.set_verbosity(optuna.logging.WARNING)
X = {"x": FloatDistribution(0.0, 1.0)}


def _add(study, state, curve, x=0.5, value=None):
    """A finished trial with intermediate values {1: curve[0], 2: curve[1], ...}."""
    study.add_trial(create_trial(state=state, params={"x": x}, distributions=X, value=value,
                                 intermediate_values={i + 1: v for i, v in enumerate(curve)}))


def _study(direction="maximize"):
    """#0 COMPLETE over 5 steps (best told), #1 and #2 PRUNED at 3, #3 and #4 PRUNED at 1, #5 FAIL,
    then #6 RUNNING (asked, not told)."""
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))
    _add(study, TrialState.COMPLETE, [0.1, 0.5, 0.3, 0.6, 0.9], value=0.9)
    _add(study, TrialState.PRUNED, [0.2, 0.4, 0.35])
    _add(study, TrialState.PRUNED, [0.1, 0.2, 0.7])
    _add(study, TrialState.PRUNED, [0.8])
    _add(study, TrialState.PRUNED, [0.05])
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.1}, distributions=X))
    running = study.ask()
    running.suggest_float("x", 0.0, 1.0)
    return study


def _sampler(min_points, keep_lower=False):
    return RungTPESampler(optuna.samplers.TPESampler(seed=0, n_startup_trials=0), min_points=min_points,
                          keep_lower=keep_lower)


def _seen(view, states=None):
    return {t.number: (t.state, t.value) for t in view._get_trials(deepcopy=False, states=states)}


def test_the_highest_rung_with_enough_finished_trials_is_fitted_as_complete():
    study = _study()
    sampler = _sampler(min_points=3)
    view = sampler.view(study)
    seen = _seen(view)
    assert sampler.last_fidelity == 3  # #0, #1, #2 reached step 3; step 4 only #0
    assert seen == {0: (TrialState.COMPLETE, 0.5),  # best of its first 3 steps, not its told 0.9
                    1: (TrialState.COMPLETE, 0.4), 2: (TrialState.COMPLETE, 0.7),
                    5: (TrialState.FAIL, None), 6: (TrialState.RUNNING, None)}  # #3, #4 left out
    # what TPE asks for: the states it names
    assert set(_seen(view, states=(TrialState.COMPLETE, TrialState.PRUNED))) == {0, 1, 2}
    assert [t.number for t in view.get_trials(states=(TrialState.RUNNING,))] == [6]
    # the copies hold the trial up to b; the study's own trials are untouched
    assert max(view.get_trials(deepcopy=False)[0].intermediate_values) == 3
    real = study.get_trials(deepcopy=False)
    assert [t.state for t in real[:5]] == [TrialState.COMPLETE] + [TrialState.PRUNED] * 4
    assert real[0].value == 0.9 and real[1].value is None and max(real[0].intermediate_values) == 5
    # everything else is the real study's
    assert view._study_id == study._study_id and view.direction == study.direction
    assert view._storage is study._storage


def test_keep_lower_leaves_the_lower_rungs_pruned():
    study = _study()
    seen = _seen(_sampler(min_points=3, keep_lower=True).view(study))
    assert seen[3] == (TrialState.PRUNED, None) and seen[4] == (TrialState.PRUNED, None)
    assert seen[0] == (TrialState.COMPLETE, 0.5) and seen[6] == (TrialState.RUNNING, None)


def test_a_lower_requirement_picks_a_higher_rung_and_minimize_takes_the_lowest_value():
    study = _study()
    sampler = _sampler(min_points=1)
    assert _seen(sampler.view(study), states=(TrialState.COMPLETE,)) == {0: (TrialState.COMPLETE, 0.9)}
    assert sampler.last_fidelity == 5
    study = _study("minimize")
    sampler = _sampler(min_points=5)
    seen = _seen(sampler.view(study), states=(TrialState.COMPLETE,))
    assert sampler.last_fidelity == 1  # all five reached step 1
    assert seen == {0: (TrialState.COMPLETE, 0.1), 1: (TrialState.COMPLETE, 0.2), 2: (TrialState.COMPLETE, 0.1),
                    3: (TrialState.COMPLETE, 0.8), 4: (TrialState.COMPLETE, 0.05)}


def test_too_few_points_passes_the_study_through():
    study = _study()
    sampler = _sampler(min_points=6)  # only five finished trials
    view = sampler.view(study)
    assert view._get_trials(deepcopy=False) == study._get_trials(deepcopy=False)
    assert sampler.last_fidelity is None
    # complete trials without intermediate values: no step to choose, passed through
    plain = optuna.create_study(direction="maximize")
    for i in range(4):
        plain.add_trial(create_trial(value=float(i), params={"x": 0.1 * i}, distributions=X))
    sampler = _sampler(min_points=2)
    assert sampler.view(plain)._get_trials(deepcopy=False) == plain._get_trials(deepcopy=False)


def test_it_samples_with_the_constant_liar_and_running_trials():
    """End to end: asked trials run concurrently (RUNNING), report, some are pruned."""
    tpe = optuna.samplers.TPESampler(seed=1, n_startup_trials=4, multivariate=True, constant_liar=True)
    sampler = RungTPESampler(tpe, min_points=default_min_points(4, 1))
    assert sampler.min_points == 4
    study = optuna.create_study(direction="maximize", sampler=sampler)
    fidelities = set()
    for _ in range(10):
        batch = [study.ask() for _ in range(3)]
        for trial in batch:
            x = trial.suggest_float("x", 0.0, 1.0)
            steps = 5 if trial.number % 3 == 0 else 1 + trial.number % 3
            for step in range(1, steps + 1):
                trial.report(1 - (x - 0.7) ** 2 + 0.01 * step, step)
            state = TrialState.COMPLETE if steps == 5 else TrialState.PRUNED
            study.tell(trial, 1 - (x - 0.7) ** 2 + 0.05 if steps == 5 else None, state=state)
        fidelities.add(sampler.last_fidelity)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 30
    assert {2, 3} & fidelities  # a rung below the top was used before enough trials completed
    assert 5 in fidelities  # and the top once 4 had
    assert math.isfinite(study.best_value)


def test_the_registered_builder_sizes_min_points_like_bohb():
    from bench.curves.rung_tpe import register_rung_tpe_sampler
    from tuner.search.samplers import build_sampler
    from tuner.search.options import check_options
    from tuner.search.samplers import SAMPLERS

    register_rung_tpe_sampler()
    space = tuple(type("P", (), {"name": f"p{i}", "when": {}})() for i in range(11))

    def options(name, **given):
        return check_options(given, SAMPLERS.get(name).options, where="o", fail=pytest.fail)

    sampler = build_sampler("tpe-rung", space=space, seed=0, options=options("tpe-rung"),
                            max_concurrent=4, num_samples=153)
    assert isinstance(sampler, RungTPESampler) and not sampler.keep_lower
    assert sampler.min_points == 12  # max(start-up min(10, 153 // 5), 11 + 1)
    tpe = build_sampler("tpe", space=space, seed=0, options=options("tpe"), max_concurrent=4, num_samples=153)
    assert sampler.tpe._n_startup_trials == tpe._n_startup_trials == 10
    assert sampler.tpe._constant_liar and sampler.tpe._multivariate
    keep = build_sampler("tpe-rung-keep", space=space, seed=0, options=options("tpe-rung-keep", min_points=3),
                         max_concurrent=1, num_samples=20)
    assert keep.keep_lower and keep.min_points == 3 and not keep.tpe._constant_liar


def test_the_best_value_view_ranks_every_finished_trial_by_its_best_value_at_any_step():
    study = _study()
    sampler = BestValueTPESampler(optuna.samplers.TPESampler(seed=0, n_startup_trials=0), min_points=5)
    seen = _seen(sampler.view(study))
    assert sampler.last_fidelity == math.inf
    # #3, pruned after one step at 0.8, now ranks above #2 (0.7 at step 3); FAIL and RUNNING stay.
    assert seen == {0: (TrialState.COMPLETE, 0.9), 1: (TrialState.COMPLETE, 0.4), 2: (TrialState.COMPLETE, 0.7),
                    3: (TrialState.COMPLETE, 0.8), 4: (TrialState.COMPLETE, 0.05),
                    5: (TrialState.FAIL, None), 6: (TrialState.RUNNING, None)}
    assert study.trials[3].state == TrialState.PRUNED  # the study itself still says PRUNED
    few = BestValueTPESampler(optuna.samplers.TPESampler(seed=0, n_startup_trials=0), min_points=6)
    assert _seen(few.view(study))[3] == (TrialState.PRUNED, None) and few.last_fidelity is None
