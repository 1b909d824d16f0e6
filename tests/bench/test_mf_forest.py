"""The multi-fidelity forest sampler (bench/curves/mf_forest.py) on in-memory studies: it learns
from every epoch of every trial, running ones included, and proposes where its model is high."""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from bench.curves.mf_forest import MultiFidelityForestSampler, draw, encode
from tuner.search.near_best import changed

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"opt": CategoricalDistribution(["sgd", "adamw"]), "lr": FloatDistribution(1e-4, 1.0, log=True)}


def truth(opt: str, lr: float, epoch: int) -> float:
    """adamw near lr 1e-2 is best at every epoch; learning curves rise with the epoch."""
    peak = 0.6 if opt == "adamw" else 0.3
    return peak * math.exp(-(math.log10(lr) + 2.0) ** 2) * (1 - 0.5 ** epoch)


def test_encode_maps_log_and_categorical_values_to_the_unit_interval():
    assert encode(1e-4, SPACE["lr"]) == 0.0 and encode(1.0, SPACE["lr"]) == 1.0
    assert math.isclose(encode(1e-2, SPACE["lr"]), 0.5)
    assert [encode(c, SPACE["opt"]) for c in ("sgd", "adamw")] == [0.0, 1.0]
    rng = np.random.RandomState(0)
    draws = [draw(SPACE["lr"], rng) for _ in range(400)]
    assert all(1e-4 <= d <= 1.0 for d in draws)
    assert 0.4 < np.mean([d < 1e-2 for d in draws]) < 0.6  # uniform over the log range
    assert all(1e-4 <= changed(1e-2, SPACE["lr"], rng, 0.15) <= 1.0 for _ in range(50))
    assert changed("sgd", SPACE["opt"], rng, 0.15) == "adamw"  # a categorical always moves


def _study_with_curves(rng, n, running_best=False):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(n):
        opt, lr = ("sgd", "adamw")[i % 2], float(10 ** rng.uniform(-4, 0))
        epochs = 1 if i % 3 else 4  # most stopped after one epoch, as under ASHA
        curve = {e: truth(opt, lr, e) for e in range(1, epochs + 1)}
        study.add_trial(create_trial(state=TrialState.PRUNED, params={"opt": opt, "lr": lr},
                                     distributions=SPACE, intermediate_values=curve))
    if running_best:  # one trial still running, already far ahead: its reports are data too
        trial = study.ask({"opt": SPACE["opt"], "lr": SPACE["lr"]})
        for e in (1, 2):
            trial.report(truth(trial.params["opt"], trial.params["lr"], e), e)
    return study


def test_after_the_start_up_the_suggestions_go_where_the_model_is_high():
    rng = np.random.RandomState(1)
    study = _study_with_curves(rng, 30)
    sampler = MultiFidelityForestSampler(n_startup_trials=10, seed=0, random_fraction=0.0)
    study.sampler = sampler
    picks = []
    for _ in range(12):
        trial = study.ask()
        opt, lr = trial.suggest_categorical("opt", ["sgd", "adamw"]), trial.suggest_float("lr", 1e-4, 1.0, log=True)
        picks.append((opt, lr))
        study.tell(trial, state=TrialState.FAIL)  # no new data: only the 30 curves guide it
    assert sampler.last_fidelity == 4  # scored at the furthest epoch reached
    assert sum(o == "adamw" for o, _ in picks) >= 10, picks
    assert np.median([abs(math.log10(lr) + 2) for _, lr in picks]) < 0.6, picks  # near 1e-2
    assert len({lr for _, lr in picks}) == len(picks)  # concurrent suggestions differ

    # the same study, random sampling: a quarter of the picks that close, half of them adamw
    rng2 = np.random.RandomState(0)
    draws = [abs(math.log10(10 ** rng2.uniform(-4, 0)) + 2) for _ in range(1000)]
    assert np.mean(np.asarray(draws) < 0.6) < 0.35


def test_before_the_start_up_is_complete_it_samples_at_random():
    study = _study_with_curves(np.random.RandomState(2), 4)
    sampler = MultiFidelityForestSampler(n_startup_trials=10, seed=0, random_fraction=0.0)
    study.sampler = sampler
    trial = study.ask()
    trial.suggest_categorical("opt", ["sgd", "adamw"])
    assert sampler.last_fidelity is None  # no model was fitted
