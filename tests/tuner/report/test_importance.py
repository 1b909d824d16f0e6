"""Hyper-parameter importance from the Optuna study: a planted dead parameter ranks last, and too
few finished trials give a note with the numbers instead of shares that mean nothing."""

from __future__ import annotations

import math

import optuna
import pytest

from tuner.places import SearchPlaces
from tuner.report.importance import MIN_COMPLETE, search_importance, study_importance
from tuner.search.study_storage import load_search_study, study_storage
from tuner.spec import parse_spec


def objective(trial: optuna.Trial) -> float:
    """Accuracy-like: peaks at lr = 0.1 (log scale); y is planted and does nothing."""
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    trial.suggest_float("y", 0.0, 1.0)  # planted: never read
    return 1.0 - abs(math.log10(lr) + 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_planted_param_ranks_last(seed):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    study.optimize(objective, n_trials=40)
    importance = study_importance(study)
    assert list(importance.values) == ["lr", "y"], importance.values
    assert importance.values["y"] < 0.1 and sum(importance.values.values()) == pytest.approx(1.0)
    assert (importance.complete, importance.pruned) == (40, 0)


def test_pruned_trials_are_left_out_and_counted():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=MIN_COMPLETE)
    for _ in range(3):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)})
        trial.report(0.1, 1)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    importance = study_importance(study)
    assert (importance.complete, importance.pruned) == (MIN_COMPLETE, 3)
    assert set(importance.values) == {"lr", "y"}


def test_too_few_finished_trials_give_a_note_with_the_count():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=MIN_COMPLETE - 1)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    importance = study_importance(study)
    assert importance.values == {}
    assert importance.note == (f"Importance needs at least {MIN_COMPLETE} finished trials (that ran "
                               f"all their epochs); this search has {MIN_COMPLETE - 1}.")


def test_the_study_is_read_from_the_search_storage_by_name(tmp_path):
    spec = parse_spec({"name": "s", "data": {"train": str(tmp_path), "val": str(tmp_path)},
                       "space": {"lr": {"loguniform": [0.001, 1.0]}}}, source="s.yaml")
    places = SearchPlaces(str(tmp_path / "runs"), "sqlite:///unused.db", None, tmp_path / "state")
    study = optuna.create_study(study_name="s", storage=study_storage(spec, places), direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=MIN_COMPLETE)
    stored = search_importance(load_search_study(spec, places), "s")
    assert stored.complete == MIN_COMPLETE and list(stored.values) == list(study_importance(study).values)
    missing = search_importance(load_search_study(spec, places, "nope"), "nope")
    assert missing.values == {} and missing.note == "No Optuna study named 'nope' in the search's storage."
