"""The search methods the benchmark compares: a registry, one entry per method.

A method is a function ``(bench, seed) -> SearchRun``: it searches the recorded space with the
replayed curves and returns every epoch it consumed, in the order they ended. Most methods are a
spec (``bench_spec``) run by the REAL driver (``real_driver`` -> ``tuner.search.driver.run_search``
with the replay trainable); others run what a user of another tool would run. Adding a candidate
(in `candidates.py`, beside the others tried for the default):

    @method("tpe-bigger-startup", "TPE with 20 random trials first + ASHA")
    def _candidate(bench, seed):
        return real_driver(bench, seed, bench_spec(bench, seed, "tpe-bigger-startup",
            sampler={"name": "tpe", "options": {"n_startup_trials": 20}}))

then ``python bench/search_quality.py --methods random+fifo,tpe-bigger-startup``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from bench.curves.replay import DIVERGED, budget_stopper, make_replay_trainable, read_events, replay_epochs
from bench.curves.surrogate import Surrogate
from bench.curves.virtual_clock import start_clock

SAMPLES_MARGIN = 1.3  # num_samples = margin x budget / expected epochs per trial (the rest never runs)


@dataclass(frozen=True)
class Bench:
    """What every method gets, the same for every method and seed."""

    surrogate: Surrogate
    raw_spec: dict  # the spec as written (search_spaces/recipe.yaml); its space is the recorded one
    budget_epochs: int  # epochs of compute each search may consume
    concurrency: int  # trials at once (Ray methods)
    time_factor: float  # wall clock only: sleep = recorded seconds x this
    work: Path  # scratch folder; every run gets its own subfolder, removed afterwards
    priors: bool = False  # every method starts from the spec's points_to_evaluate, or none does
    clock: str = "simulated"  # "simulated": repeatable order of epochs (virtual_clock); "wall": sleeps

    @property
    def epochs(self) -> int:
        return self.surrogate.epochs


@dataclass
class SearchRun:
    events: list[dict]  # {"t": seconds, "val_acc", "epoch", "trial", "params"} per epoch, in order
    wall_s: float
    trials: int
    notes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    run: Callable[[Bench, int], SearchRun]


METHODS: dict[str, Method] = {}
# What the benchmark compares unless --methods says otherwise ("default": what a spec gets when it
# names no sampler or scheduler, the winner of the candidates below on the tuning seeds).
DEFAULT_METHODS = ("random+fifo", "random+asha", "journal", "default", "optuna-tpe+hyperband",
                   "ray-optuna+asha", "gp+asha")
DEFAULT_METHOD = "default"
BASELINE_METHOD = "random+fifo"


def method(name: str, summary: str):
    def add(run: Callable[[Bench, int], SearchRun]):
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = Method(name, summary, run)
        return run
    return add


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]


# --- building blocks -----------------------------------------------------------------------------

def bench_spec(bench: Bench, seed: int, name: str, *, sampler: Optional[dict] = None,
               scheduler: Optional[dict] = None, space: Optional[dict] = None, fixed: Optional[dict] = None,
               priors: Optional[bool] = None, num_samples: Optional[int] = None):
    """The spec a method runs: the recorded spec with another sampler/scheduler/space.

    ``sampler``/``scheduler`` None: the keys are left out (the spec's defaults, as a user who
    omits them gets); the sampler's seed is always the benchmark seed. ``priors``: keep the spec's
    points_to_evaluate (None: as ``bench.priors`` says, the same for every method).
    ``num_samples`` defaults to enough trials to spend the epoch budget.
    """
    from tuner.spec import parse_spec

    raw = copy.deepcopy(bench.raw_spec)
    raw["name"] = f"{name.replace('+', '-')}-s{seed}"
    raw["data"] = {"train": str(bench.work), "val": str(bench.work),
                   "image_size": raw.get("data", {}).get("image_size", 32)}
    raw["fixed"] = {**raw.get("fixed", {}), "epochs": bench.epochs, "pretrained": False, **(fixed or {})}
    if space is not None:
        raw["space"] = space
    raw["sampler"] = {**(sampler or {}), "seed": seed}
    raw.pop("scheduler", None)
    if scheduler is not None:
        raw["scheduler"] = scheduler
    if not (bench.priors if priors is None else priors):
        raw.pop("points_to_evaluate", None)
    raw["budget"] = {"num_samples": num_samples or 1, "max_concurrent": bench.concurrency, "max_failures": 0}
    raw["resources"] = {"cpu": 1, "gpu": 0}
    raw.pop("storage", None)
    raw.pop("tracking", None)
    spec = parse_spec(raw, source=f"bench:{name}")
    if num_samples is None:  # enough trials to spend the budget (the replay ends the surplus at once)
        num_samples = math.ceil(SAMPLES_MARGIN * bench.budget_epochs / expected_epochs_per_trial(spec))
        spec = dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, num_samples=num_samples))
    return spec


def expected_epochs_per_trial(spec) -> float:
    """Epochs an average trial runs: all of them under FIFO; under (synchronous) successive halving
    grace + what the 1/rf promoted at each rung add (asynchronous ASHA promotes a little more)."""
    name, options, epochs = spec.scheduler.name, spec.scheduler.options, spec.epochs
    if name == "fifo":
        return float(epochs)
    if name != "asha":
        return 1.0  # a trial runs at least one epoch
    rung, factor = min(options["grace_period"], epochs), options["reduction_factor"]
    total, share = float(rung), 1.0
    while rung < epochs:
        share /= factor
        following = min(epochs, rung * factor)
        total += share * (following - rung)
        rung = following
    return total


def no_tracking():
    """The benchmark measures the search, not MLflow bookkeeping: a Tune callback that does nothing."""
    from ray import tune

    return tune.Callback()


def _run_dir(bench: Bench, spec) -> Path:
    path = bench.work / spec.name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def real_driver(bench: Bench, seed: int, spec, *, upstream: bool = False) -> SearchRun:
    """Runs ``spec`` through ``tuner.search.driver.run_search`` with the replay trainable
    (``upstream``: the same Tuner but with Ray's own OptunaSearch, which tells Optuna every trial
    the scheduler stopped as COMPLETE with its low-fidelity value)."""
    import ray

    from tuner.cluster.connect import start_ray
    from tuner.places import SearchPlaces
    from tuner.search.driver import run_search, trial_budget

    folder = _run_dir(bench, spec)
    clock = None
    if bench.clock == "simulated":
        start_ray(None)  # the clock is an actor: Ray must be up before the driver brings it up
        clock = start_clock(spec.budget.max_concurrent, trial_budget(spec), bench.budget_epochs)
    trainable = make_replay_trainable(bench.surrogate, seed=seed, time_factor=bench.time_factor,
                                      events_dir=folder / "events", epoch_budget=bench.budget_epochs,
                                      clock=clock)
    places = SearchPlaces(str(folder / "ray"), f"sqlite:///{folder / 'mlflow.db'}", folder / "mlruns",
                          folder / "state")
    stop = budget_stopper(folder / "events", bench.budget_epochs)
    start = time.time()
    try:
        results = (_upstream_search(spec, places, trainable, stop) if upstream
                   else run_search(spec, places, no_tracking(), trainable=trainable, stop=stop))
        wall = time.time() - start
        events = read_events(folder / "events")
        notes = {"errors": sum(r.error is not None for r in results)}
        if clock is not None:
            notes["clock"] = ray.get(clock.stats.remote())
        return SearchRun(events if clock is not None else _relative(events, start), wall, len(results), notes)
    finally:
        if clock is not None:
            ray.kill(clock)
        shutil.rmtree(folder, ignore_errors=True)


def _upstream_search(spec, places, trainable, stop):
    """Ray's OptunaSearch as a plain Ray user wires it, with our sampler, scheduler and points."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from tuner.cluster.connect import start_ray
    from tuner.search.samplers import build_sampler
    from tuner.search.schedulers import build_scheduler
    from tuner.search.space import define_by_run

    start_ray(None)
    searcher = OptunaSearch(
        space=define_by_run(spec.space), metric=spec.metric, mode=spec.mode,
        sampler=build_sampler(spec.sampler.name, space=spec.space, seed=spec.sampler.seed,
                              options=spec.sampler.options, max_concurrent=spec.budget.max_concurrent,
                              num_samples=spec.budget.num_samples),
        points_to_evaluate=list(spec.points_to_evaluate) or None,
    )
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}),
        param_space=spec.base_config(),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.budget.max_concurrent),
            scheduler=build_scheduler(spec.scheduler.name, metric=spec.metric, mode=spec.mode,
                                      epochs=spec.epochs, options=spec.scheduler.options),
            num_samples=spec.budget.num_samples, reuse_actors=True),
        run_config=tune.RunConfig(name=spec.name, storage_path=places.storage_path, stop=stop, verbose=0),
    ).fit()


def _relative(events: list[dict], start: float) -> list[dict]:
    return [{**e, "t": round(e["t"] - start, 4)} for e in events]


def journal_plain_values(raw_space: dict, lr_name: str = "lr") -> dict:
    """The journal's fixed recipe in the recorded space: every choice at its first option (the
    recipe lists "off" first), weight decay 5e-4 (clipped into its range), conditions respected."""
    values: dict = {}
    for name, entry in raw_space.items():
        if name == lr_name:
            continue
        when = entry.get("when", {})
        if any(values.get(parent) not in (allowed if isinstance(allowed, list) else [allowed])
               for parent, allowed in when.items()):
            continue
        if "choice" in entry or "grid" in entry:
            values[name] = (entry.get("choice") or entry.get("grid"))[0]
        else:
            low, high = (entry.get("loguniform") or entry.get("uniform") or entry.get("int"))
            values[name] = min(max(5e-4, low), high) if name == "weight_decay" else \
                (math.sqrt(low * high) if "loguniform" in entry else (low + high) / 2)
    return values


def journal_lr_grid(raw_space: dict, lr_name: str = "lr") -> list[float]:
    """The journal's learning rates 2^0 .. 2^-12 that fall inside the space's lr range."""
    low, high = raw_space[lr_name]["loguniform"]
    return [2.0 ** -k for k in range(13) if low <= 2.0 ** -k <= high]


# --- the methods ---------------------------------------------------------------------------------

@method("random+fifo", "Optuna's random sampler, every trial to the end (the baseline)")
def _random_fifo(bench: Bench, seed: int) -> SearchRun:
    return real_driver(bench, seed, bench_spec(bench, seed, "random+fifo", sampler={"name": "random"},
                                               scheduler={"name": "fifo"}))


@method("random+asha", "Optuna's random sampler + ASHA (its default options)")
def _random_asha(bench: Bench, seed: int) -> SearchRun:
    return real_driver(bench, seed, bench_spec(bench, seed, "random+asha", sampler={"name": "random"},
                                               scheduler={"name": "asha"}))


@method("journal", "The journal's grid: lr 2^0..2^-12 (inside the range) on a plain sgd recipe, FIFO")
def _journal(bench: Bench, seed: int) -> SearchRun:
    space = bench.raw_spec["space"]
    spec = bench_spec(bench, seed, "journal", sampler={"name": "grid"}, scheduler={"name": "fifo"},
                      space={"lr": {"grid": journal_lr_grid(space)}}, fixed=journal_plain_values(space),
                      priors=False)
    return real_driver(bench, seed, spec)


@method("default", "Today's default: what a spec gets when it names no sampler or scheduler (TPE + ASHA)")
def _default(bench: Bench, seed: int) -> SearchRun:
    return real_driver(bench, seed, bench_spec(bench, seed, "default"))


@method("ray-optuna+asha", "Ray's own OptunaSearch (stopped trials told COMPLETE) + ASHA, default's settings")
def _ray_optuna(bench: Bench, seed: int) -> SearchRun:
    return real_driver(bench, seed, bench_spec(bench, seed, "ray-optuna+asha"), upstream=True)


@method("gp+asha", "Optuna's GPSampler + ASHA through our driver (registered as sampler 'gp' here)")
def _gp_asha(bench: Bench, seed: int) -> SearchRun:
    register_gp_sampler()
    return real_driver(bench, seed, bench_spec(bench, seed, "gp+asha", sampler={"name": "gp"},
                                               scheduler={"name": "asha"}))


@method("optuna-tpe+hyperband", "Plain Optuna in one process: TPESampler + HyperbandPruner, ask/tell")
def _optuna_hyperband(bench: Bench, seed: int) -> SearchRun:
    import optuna

    from tuner.search.space import define_by_run

    spec = bench_spec(bench, seed, "optuna-tpe+hyperband")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=bench.epochs,
                                                                      reduction_factor=3))
    for point in spec.points_to_evaluate:  # only when the benchmark gives every method the priors
        study.enqueue_trial(dict(point))
    space = define_by_run(spec.space)
    events: list[dict] = []
    clock, start, trials = 0.0, time.time(), 0
    while len(events) < bench.budget_epochs:
        trial = study.ask()
        space(trial)
        trials += 1
        state, value = optuna.trial.TrialState.FAIL, None
        for metrics in replay_epochs(bench.surrogate, trial.params, seed=seed, epochs=bench.epochs):
            if len(events) >= bench.budget_epochs:
                break
            clock += metrics["epoch_time_s"] * bench.time_factor  # simulated: one process, no sleep
            events.append({"t": round(clock, 4), "trial": str(trial.number), "epoch": metrics["epoch"],
                           "val_acc": metrics["val_acc"], "params": trial.params})
            if metrics["status"] == DIVERGED:
                break
            trial.report(metrics["val_acc"], metrics["epoch"])
            if metrics["final"]:
                state, value = optuna.trial.TrialState.COMPLETE, metrics["val_acc"]
            elif trial.should_prune():
                state = optuna.trial.TrialState.PRUNED
                break
        study.tell(trial, value, state=state)
    return SearchRun(events, time.time() - start, trials, {"clock": "simulated (one process)"})


def register_gp_sampler() -> None:
    """Adds Optuna's GPSampler to the product's sampler registry, for this process only."""
    from tuner.search.samplers import SAMPLERS, SamplerEntry

    if "gp" in SAMPLERS:
        return

    def build(b):
        import optuna

        return optuna.samplers.GPSampler(seed=b.seed, warn_independent_sampling=False)

    SAMPLERS.register("gp")(SamplerEntry(build=build, summary="Optuna's Gaussian-process sampler (benchmark)"))
