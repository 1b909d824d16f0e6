"""Sampler registry: name -> how to build the Optuna sampler, the options it takes, the space it handles.

Adding a sampler is one ``_register(...)`` entry here; the spec parser, the docs' list and the
tests read the entries (their options and supported parameter kinds), so nothing else changes.

Builders import optuna inside themselves: the spec parser reads this registry's metadata, and
``tuner train`` / the diagnostics parse specs without needing Optuna loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from tuner.search.options import Option
from trainables.registry import Registry

CONTINUOUS = frozenset({"loguniform", "uniform", "int"})
ALL_KINDS = CONTINUOUS | {"choice", "grid"}


@dataclass(frozen=True)
class SamplerBuild:
    """What a builder gets: the spec's parameters (``tuner.spec.space.Param``), seed and options."""

    space: tuple
    seed: Any
    options: dict
    max_concurrent: int
    num_samples: Optional[int] = None  # trials the search will ask for (None: unknown, open-ended)

    @property
    def conditional(self) -> bool:
        return any(p.when for p in self.space)


@dataclass(frozen=True)
class SamplerEntry:
    build: Callable[[SamplerBuild], Any]  # -> optuna.samplers.BaseSampler
    summary: str
    kinds: frozenset = ALL_KINDS  # parameter kinds it can sample
    options: dict = field(default_factory=dict)  # name -> Option


SAMPLERS: Registry[SamplerEntry] = Registry("sampler")


def _register(name: str, **entry):
    def add(build):
        SAMPLERS.register(name)(SamplerEntry(build=build, **entry))
        return build
    return add


@_register(
    "tpe", summary="Tree-structured Parzen estimator (multivariate, grouped for conditional spaces)",
    options={
        "multivariate": Option(bool, True, help="model parameters jointly"),
        "group": Option(bool, None, help="split conditional subspaces (default: on when the space has "
                        "`when` and the model is multivariate)"),
        "constant_liar": Option(bool, None, help="penalise running trials (default: on when max_concurrent > 1)"),
        "n_startup_trials": Option(int, None, minimum=0, help="random trials before the model is used "
                                   "(default: sized to the budget, see startup_trials)"),
        "n_ei_candidates": Option(int, 24, minimum=1, help="candidates scored per suggestion"),
        "gamma": Option(float, 0.1, minimum=0.01, maximum=0.5,
                        help="fraction of the finished trials the model calls good (at most 25)"),
        "near_best": Option(float, 0.0, minimum=0.0, maximum=1.0,
                            help="share of trials, after the start-up, that change a few parameters of "
                                 "the best trial so far instead of asking the model (near_best.py)"),
    },
)
def _tpe(b: SamplerBuild):
    import optuna  # heavy: only when a search builds its sampler

    o = b.options
    n_startup = startup_trials(b) if o["n_startup_trials"] is None else o["n_startup_trials"]
    tpe = optuna.samplers.TPESampler(
        seed=b.seed, multivariate=o["multivariate"],
        # Optuna groups only a multivariate model: univariate TPE on a conditional space is not grouped.
        group=(b.conditional and o["multivariate"]) if o["group"] is None else o["group"],
        constant_liar=b.max_concurrent > 1 if o["constant_liar"] is None else o["constant_liar"],
        n_startup_trials=n_startup, n_ei_candidates=o["n_ei_candidates"], gamma=GoodFraction(o["gamma"]),
    )
    if not o["near_best"]:
        return tpe
    from tuner.search.near_best import NearBestSampler  # imports optuna: only when a search builds it

    return NearBestSampler(tpe, fraction=o["near_best"], after_trials=n_startup, seed=b.seed)


@dataclass(frozen=True)
class GoodFraction:
    """TPE's gamma: how many of ``n`` finished trials form the "good" density, ceil(fraction x n),
    at most 25 (Optuna's default is this with 0.1). A class, not a lambda: the sampler is pickled
    with the searcher's state for a resume."""

    fraction: float

    def __call__(self, n: int) -> int:
        return min(math.ceil(self.fraction * n), 25)


MAX_STARTUP_TRIALS = 10  # Optuna's own default, for open-ended and large searches


def startup_trials(b: SamplerBuild) -> int:
    """Random trials before the model guides: a fifth of the budget, at least one batch of parallel
    trials, at most Optuna's 10. With Optuna's fixed 10, a 12-trial search is 10 random trials and
    2 guided ones; the model starts learning after max(2, 12 // 5) = 2 here."""
    if b.num_samples is None:
        return MAX_STARTUP_TRIALS
    return min(MAX_STARTUP_TRIALS, max(b.max_concurrent, b.num_samples // 5))


@_register("random", summary="Independent uniform sampling (the baseline every method must beat)")
def _random(b: SamplerBuild):
    import optuna  # heavy: only when a search builds its sampler

    return optuna.samplers.RandomSampler(seed=b.seed)


@_register(
    "cmaes", summary="CMA-ES over continuous parameters", kinds=CONTINUOUS,
    options={
        "sigma0": Option(float, None, minimum=0, help="initial step size (default: 1/6 of the range)"),
        "n_startup_trials": Option(int, 1, minimum=0),
        "with_margin": Option(bool, False, help="CMA-ES with margin (for integer parameters)"),
        "lr_adapt": Option(bool, False, help="learning-rate adaptation for noisy objectives"),
    },
)
def _cmaes(b: SamplerBuild):
    import optuna  # heavy: only when a search builds its sampler

    return optuna.samplers.CmaEsSampler(seed=b.seed, **b.options)


@_register(
    "qmc", summary="Quasi-Monte Carlo (Sobol or Halton) over continuous parameters", kinds=CONTINUOUS,
    options={
        "qmc_type": Option(str, "sobol", choices=("sobol", "halton")),
        "scramble": Option(bool, True, help="randomised (seeded) low-discrepancy sequence"),
    },
)
def _qmc(b: SamplerBuild):
    import optuna  # heavy: only when a search builds its sampler

    # Optuna's QMC seed only scrambles; an unscrambled sequence is the same for every seed.
    return optuna.samplers.QMCSampler(seed=b.seed, **b.options)


@_register("grid", summary="Every combination of choice/grid options, exactly once",
           kinds=frozenset({"choice", "grid"}))
def _grid(b: SamplerBuild):
    import optuna  # heavy: only when a search builds its sampler

    if b.conditional:
        # GridSampler needs every parameter in every trial; a conditional grid's points are
        # enqueued by the driver instead (grid_points), in order, and sampled no further.
        return optuna.samplers.RandomSampler(seed=b.seed)
    return optuna.samplers.GridSampler({p.name: list(p.choices) for p in b.space}, seed=b.seed)


def build_sampler(name: str, *, space: tuple, seed: Any, options: dict, max_concurrent: int,
                  num_samples: Optional[int] = None):
    """The Optuna sampler of registry entry ``name`` (options already checked by the spec)."""
    return SAMPLERS.get(name).build(SamplerBuild(space, seed, options, max_concurrent, num_samples))
