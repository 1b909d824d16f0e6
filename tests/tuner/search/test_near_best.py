"""NearBestSampler: trials that change a few parameters of the best trial so far."""

import math
import pickle

import optuna
import pytest

from tuner.search.near_best import PARENT_KEY, NearBestSampler, best_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial):
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "adamw"])
    lr = trial.suggest_float("lr", 1e-3, 0.4, log=True)
    if optimizer == "sgd":  # a conditional parameter: a child of an adamw parent draws it afresh
        trial.suggest_categorical("nesterov", [True, False])
    trial.suggest_int("blocks", 1, 4)
    width = trial.suggest_categorical("width", [0.125, 0.25])
    return -abs(math.log(lr / 0.003)) + (1.0 if optimizer == "adamw" else 0.0) + width


def study_with(fraction, seed=0, startup=4, n_trials=30):
    sampler = NearBestSampler(optuna.samplers.RandomSampler(seed=seed), fraction=fraction,
                              after_trials=startup, seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=n_trials)
    return study


def children(study):
    return [t for t in study.trials if PARENT_KEY in t.system_attrs]


def test_a_child_differs_from_its_parent_in_a_few_parameters_within_their_ranges():
    study = study_with(0.5)
    kids = children(study)
    assert 8 <= len(kids) <= 22  # about half of the 26 trials after the start-up
    for kid in kids:
        parent = study.trials[kid.system_attrs[PARENT_KEY]]
        assert parent.number < kid.number
        changed = {k for k in set(parent.params) | set(kid.params) if parent.params.get(k) != kid.params.get(k)}
        assert changed, "a child never repeats its parent"
        assert 1e-3 <= kid.params["lr"] <= 0.4 and kid.params["blocks"] in (1, 2, 3, 4)
        assert isinstance(kid.params["blocks"], int)
    # Mostly small changes: most children keep the parent's optimizer and width.
    kept = sum(study.trials[k.system_attrs[PARENT_KEY]].params["optimizer"] == k.params["optimizer"]
               for k in kids)
    assert kept >= len(kids) / 2


def test_the_parent_is_the_best_trial_at_the_time():
    study = study_with(1.0, startup=3, n_trials=15)
    for kid in children(study):
        earlier = [t for t in study.trials[:kid.number] if t.value is not None]
        assert study.trials[kid.system_attrs[PARENT_KEY]].value == max(t.value for t in earlier)


def test_no_child_before_the_start_up_nor_with_fraction_zero_nor_for_enqueued_points():
    study = study_with(1.0, startup=5, n_trials=12)
    assert [t.number for t in children(study)] == list(range(5, 12))
    assert children(study_with(0.0)) == []
    sampler = NearBestSampler(optuna.samplers.RandomSampler(seed=1), fraction=1.0, after_trials=0, seed=1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial({"optimizer": "sgd", "lr": 0.2, "nesterov": True, "blocks": 2, "width": 0.125})
    study.optimize(objective, n_trials=1)
    assert study.trials[0].params["lr"] == 0.2 and not children(study)


def test_near_the_best_beats_the_base_sampler_alone_on_a_space_with_one_good_region():
    # Random search with half its trials near the best finds the adamw/lr 0.003/width 0.25 corner
    # better than random search alone, over the same seeds (0.97 against 0.93 on average).
    def best(fraction):
        return [study_with(fraction, seed=s, n_trials=25).best_value for s in range(30)]

    alone, near = best(0.0), best(0.5)
    assert sum(near) / 30 > sum(alone) / 30 + 0.02


def test_best_trial_counts_running_trials_reports_and_ties_go_to_the_earlier():
    study = optuna.create_study(direction="maximize")
    first = study.ask()
    first.report(0.3, 1)
    second = study.ask()
    second.report(0.2, 1)
    second.report(0.5, 3)  # still running, and the best so far
    assert best_trial(study).number == second.number
    study.tell(first, 0.5)
    assert best_trial(study).number == first.number  # tied at 0.5: the earlier one
    assert best_trial(optuna.create_study()) is None


def test_the_tpe_option_wraps_the_model_and_the_sampler_pickles_mid_search():
    from tuner.search.samplers import build_sampler

    sampler = build_sampler("tpe", space=(), seed=3, max_concurrent=2, num_samples=20, options={
        "multivariate": True, "group": None, "constant_liar": None, "n_startup_trials": None,
        "n_ei_candidates": 24, "gamma": 0.1, "near_best": 0.5})
    assert isinstance(sampler, NearBestSampler) and sampler._after_trials == 4
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=8)
    running = study.ask()
    objective(running)  # params drawn, not told: its plan is pickled with the sampler
    again = pickle.loads(pickle.dumps(sampler))
    assert again._fraction == 0.5
    with pytest.raises(ValueError, match="fraction"):
        NearBestSampler(sampler, fraction=1.5, after_trials=0)
