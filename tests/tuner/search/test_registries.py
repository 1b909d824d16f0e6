"""Every sampler and scheduler entry, as the spec sees it: its options are checked (an unknown one
names the valid ones), the parameter kinds it cannot handle are refused, and it builds.

Parametrized over the registries: a new entry is tested without editing this file.
"""

from __future__ import annotations

import optuna
import pytest
from ray.tune.schedulers import TrialScheduler

from tuner.search.samplers import CONTINUOUS, SAMPLERS, build_sampler
from tuner.search.schedulers import SCHEDULERS, build_scheduler
from tuner.spec import SpecError, parse_spec

PARAMS_OF_KIND = {
    "loguniform": ("lr", {"loguniform": [0.001, 1.0]}),
    "uniform": ("momentum", {"uniform": [0.5, 0.99]}),
    "int": ("epochs", {"int": [2, 6]}),
    "choice": ("optimizer", {"choice": ["sgd", "adam"]}),
    "grid": ("batch_size", {"grid": [32, 64]}),
}
WRONG_VALUE = {bool: "yes", int: 2.5, float: "fast", str: 3}


def spec_with(tmp_path, kinds, *, sampler=None, scheduler=None):
    space = dict(PARAMS_OF_KIND[k] for k in sorted(kinds))
    raw = {"name": "s", "data": {"train": str(tmp_path), "val": str(tmp_path)}, "space": space}
    if sampler is not None:
        raw["sampler"] = sampler
    if scheduler is not None:
        raw["scheduler"] = scheduler
    return parse_spec(raw, source="s.yaml")


def handled_space(entry) -> set:
    # grid parameters with a non-grid sampler would be a different test; keep to what it handles
    kinds = set(entry.kinds)
    return kinds - {"grid"} if kinds - {"grid"} else kinds


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampler_builds_on_the_space_it_handles(tmp_path, name):
    entry = SAMPLERS.get(name)
    spec = spec_with(tmp_path, handled_space(entry), sampler={"name": name, "seed": 3})
    assert set(spec.sampler.options) == set(entry.options)  # defaults filled in, nothing else
    sampler = build_sampler(name, space=spec.space, seed=3, options=spec.sampler.options, max_concurrent=2)
    assert isinstance(sampler, optuna.samplers.BaseSampler)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampler_refuses_an_unknown_option_naming_the_valid_ones(tmp_path, name):
    entry = SAMPLERS.get(name)
    with pytest.raises(SpecError) as err:
        spec_with(tmp_path, handled_space(entry), sampler={"name": name, "options": {"n_warmup": 3}})
    message = str(err.value)
    assert message.startswith("s.yaml: sampler.options.n_warmup: unknown option; valid options: ")
    assert all(option in message for option in entry.options)


@pytest.mark.parametrize("name, option", [(n, o) for n in SAMPLERS.names() for o in SAMPLERS.get(n).options])
def test_sampler_option_of_the_wrong_type_is_refused(tmp_path, name, option):
    entry = SAMPLERS.get(name)
    bad = WRONG_VALUE[entry.options[option].kind]
    with pytest.raises(SpecError, match=f"sampler.options.{option}: must be"):
        spec_with(tmp_path, handled_space(entry), sampler={"name": name, "options": {option: bad}})


@pytest.mark.parametrize("name", [n for n in SAMPLERS.names() if SAMPLERS.get(n).kinds != frozenset(PARAMS_OF_KIND)])
def test_sampler_refuses_a_parameter_kind_it_cannot_search(tmp_path, name):
    entry = SAMPLERS.get(name)
    missing = sorted(set(PARAMS_OF_KIND) - entry.kinds)[0]
    with pytest.raises(SpecError, match=f"the {name} sampler cannot search a {missing} parameter"):
        spec_with(tmp_path, handled_space(entry) | {missing}, sampler={"name": name})


def test_continuous_samplers_declare_it():
    # What the issue promises: cmaes and qmc search continuous parameters only.
    assert SAMPLERS.get("cmaes").kinds == CONTINUOUS and SAMPLERS.get("qmc").kinds == CONTINUOUS


def test_an_option_reaches_the_optuna_sampler(tmp_path):
    spec = spec_with(tmp_path, {"loguniform"}, sampler={"name": "tpe", "options": {"n_startup_trials": 3}})
    sampler = build_sampler("tpe", space=spec.space, seed=0, options=spec.sampler.options, max_concurrent=1)
    assert sampler._n_startup_trials == 3


def test_tpe_gamma_is_the_good_fraction_capped_at_25_and_survives_a_pickle(tmp_path):
    import pickle  # the searcher's state is pickled for a resume: the sampler must be too

    spec = spec_with(tmp_path, {"loguniform"}, sampler={"name": "tpe", "options": {"gamma": 0.2}})
    sampler = build_sampler("tpe", space=spec.space, seed=0, options=spec.sampler.options, max_concurrent=1)
    gamma = pickle.loads(pickle.dumps(sampler))._gamma
    assert [gamma(n) for n in (1, 10, 11, 60, 500)] == [1, 2, 3, 12, 25]
    default = build_sampler("tpe", space=spec.space, seed=0, max_concurrent=1,
                            options={**spec.sampler.options, "gamma": 0.1})._gamma
    # 0.1 is Optuna's own default_gamma: the default search is unchanged by the option.
    from optuna.samplers._tpe.sampler import default_gamma  # private: compared, never called by the product

    assert [default(n) for n in range(0, 400, 7)] == [default_gamma(n) for n in range(0, 400, 7)]
    with pytest.raises(SpecError, match=r"sampler.options.gamma: must be <= 0.5, got 0.7"):
        spec_with(tmp_path, {"loguniform"}, sampler={"name": "tpe", "options": {"gamma": 0.7}})


def test_univariate_tpe_builds_on_a_conditional_space(tmp_path):
    # Optuna refuses group=True without multivariate: the default group follows the model.
    spec = parse_spec({"name": "s", "data": {"train": str(tmp_path), "val": str(tmp_path)},
                       "space": {"augmentation": {"choice": ["light", "rrc"]},
                                 "aug.min_scale": {"choice": [0.25, 0.5], "when": {"augmentation": "rrc"}}},
                       "sampler": {"name": "tpe", "options": {"multivariate": False}}}, source="s.yaml")
    sampler = build_sampler("tpe", space=spec.space, seed=0, options=spec.sampler.options, max_concurrent=2)
    assert not sampler._multivariate and not sampler._group


@pytest.mark.parametrize("num_samples,max_concurrent,startup", [
    (12, 2, 2),      # the journal's 12-trial search: 2 random trials, not Optuna's 10 of 12
    (40, 2, 8),      # a fifth of the budget
    (12, 4, 4),      # at least the first batch of parallel trials
    (500, 4, 10),    # at most Optuna's 10
    (None, 2, 10),   # an open-ended search
])
def test_tpe_startup_is_sized_to_the_budget(tmp_path, num_samples, max_concurrent, startup):
    spec = spec_with(tmp_path, {"loguniform"}, sampler={"name": "tpe"})
    sampler = build_sampler("tpe", space=spec.space, seed=0, options=spec.sampler.options,
                            max_concurrent=max_concurrent, num_samples=num_samples)
    assert sampler._n_startup_trials == startup


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_scheduler_builds_with_its_defaults(tmp_path, name):
    entry = SCHEDULERS.get(name)
    spec = spec_with(tmp_path, {"loguniform"}, scheduler={"name": name})
    assert set(spec.scheduler.options) == set(entry.options)
    scheduler = build_scheduler(name, metric="val_acc", mode="max", epochs=4, options=spec.scheduler.options)
    assert isinstance(scheduler, TrialScheduler)


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_scheduler_refuses_an_unknown_option_naming_the_valid_ones(tmp_path, name):
    entry = SCHEDULERS.get(name)
    with pytest.raises(SpecError) as err:
        spec_with(tmp_path, {"loguniform"}, scheduler={"name": name, "brackets": 3})
    assert str(err.value).startswith("s.yaml: scheduler.brackets: unknown option; valid options: ")
    assert all(option in str(err.value) for option in entry.options)


def test_median_no_longer_swallows_a_reduction_factor(tmp_path):
    # Before the registry, median silently ignored reduction_factor.
    with pytest.raises(SpecError, match="scheduler.reduction_factor: unknown option"):
        spec_with(tmp_path, {"loguniform"}, scheduler={"name": "median", "reduction_factor": 3})
