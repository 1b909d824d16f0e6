"""A sampler that spends a fraction of its trials on small changes to the best configuration so far.

Model-based samplers (TPE) learn the shape of the whole space; with a few dozen trials, most of
them judged after one epoch, an 11-parameter space is too big to learn, while a good configuration,
once found, usually has good neighbours (the same optimizer and augmentation, a nearby learning
rate). This is the "sample around the incumbent" part of PriorBand (Mallik et al., 2023) and of
local-search hybrids such as BOHB's random fraction turned round: with probability
``fraction`` a trial copies the best trial seen so far (its expert-recipe priors included, as they
run first) and changes a few of its parameters; otherwise the wrapped sampler decides.

"Best so far" is the highest value any trial reported at any epoch, running trials included: under
ASHA the promising trials are the ones still running, and a later epoch's value is higher than an
early one, so a trial that went further ranks above an early-stopped one of the same promise.

A class with plain attributes: Ray pickles the searcher, sampler included, for a resume.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

# Trial system attributes (in the study, so a resumed driver and the report can see them).
PARENT_KEY = "near_best:parent"  # number of the trial this one changes


class NearBestSampler(optuna.samplers.BaseSampler):
    def __init__(self, base: optuna.samplers.BaseSampler, *, fraction: float, after_trials: int,
                 mutation_rate: float = 0.3, step: float = 0.15, seed: Optional[int] = None):
        """``fraction``: the share of trials that change the best one (0: ``base`` alone).
        ``after_trials``: finished trials (COMPLETE or PRUNED) before the first such trial, so the
        best is a real one (the base's random start-up, typically). ``mutation_rate``: the chance
        that each parameter changes (one always does). ``step``: the standard deviation of a
        numeric change, as a fraction of the parameter's range (log range for log parameters)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be within [0, 1], got {fraction}")
        self._base = base
        self._fraction = fraction
        self._after_trials = after_trials
        self._mutation_rate = mutation_rate
        self._step = step
        self._rng = np.random.RandomState(seed)
        # trial id -> (parent's params, parent's distributions, the parameter that must change).
        # Kept here, not read back from the trial: Optuna hands the sampler a copy of the trial
        # taken before before_trial ran.
        self._plans: dict[int, tuple[dict, dict, str]] = {}

    # --- the trial-level choice --------------------------------------------------------------

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)
        if "fixed_params" in trial.system_attrs or self._fraction <= 0.0:  # enqueued, or turned off
            return
        finished = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED),
                                     use_cache=True)
        if len(finished) < self._after_trials or self._rng.uniform() >= self._fraction:
            return
        parent = best_trial(study, mode_max=study.direction == optuna.study.StudyDirection.MAXIMIZE)
        if parent is None or not parent.params:
            return
        forced = sorted(parent.params)[self._rng.randint(len(parent.params))]
        self._plans[trial._trial_id] = (dict(parent.params), dict(parent.distributions), forced)
        # On record in the study, for whoever asks where a configuration came from.
        study._storage.set_trial_system_attr(trial._trial_id, PARENT_KEY, parent.number)

    # --- sampling ----------------------------------------------------------------------------

    def infer_relative_search_space(self, study, trial):
        if trial._trial_id in self._plans:
            return {}  # every parameter comes from sample_independent, next to the parent's
        return self._base.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        if trial._trial_id in self._plans:
            return {}
        return self._base.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        plan = self._plans.get(trial._trial_id)
        if plan is None:
            return self._base.sample_independent(study, trial, param_name, param_distribution)
        params, distributions, forced = plan
        old = params.get(param_name)
        if old is None or distributions.get(param_name) != param_distribution:
            # Not active in the parent (a condition changed): nothing to stay near, draw it.
            return optuna.samplers.RandomSampler(seed=self._rng.randint(2**31)).sample_independent(
                study, trial, param_name, param_distribution)
        if param_name != forced and self._rng.uniform() >= self._mutation_rate:
            return old
        for _ in range(8):  # a small step on an integer or a stepped range can round back to ``old``
            new = changed(old, param_distribution, self._rng, self._step)
            if new != old:
                return new
        return _next_to(old, param_distribution)

    # --- delegated ---------------------------------------------------------------------------

    def after_trial(self, study, trial, state, values) -> None:
        self._plans.pop(trial._trial_id, None)
        self._base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._base.reseed_rng()
        self._rng.seed()


def best_trial(study: optuna.Study, *, mode_max: bool = True) -> Optional[FrozenTrial]:
    """The trial with the best value reported at any epoch (its final value included), running,
    pruned or complete; None before any report. Ties: the earlier trial."""
    best, best_value = None, None
    for trial in study._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                           TrialState.RUNNING), use_cache=False):
        values = list(trial.intermediate_values.values())
        if trial.value is not None:
            values.append(trial.value)
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            continue
        value = max(values) if mode_max else min(values)
        if best_value is None or (value > best_value if mode_max else value < best_value):
            best, best_value = trial, value
    return best


def changed(old: Any, dist: BaseDistribution, rng: np.random.RandomState, step: float) -> Any:
    """A value near ``old``: another choice of a categorical; a number moved by a Gaussian step of
    ``step`` of its (log) range, folded back inside it and rounded to its step (it may round back
    to ``old``)."""
    if isinstance(dist, CategoricalDistribution):
        others = [c for c in dist.choices if c != old]
        return others[rng.randint(len(others))] if others else old
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        to_unit, from_unit = unit_scale(dist)
        return on_range(from_unit(_reflect(to_unit(old) + rng.normal(0.0, step))), dist)
    return old


def on_range(value: float, dist) -> Any:
    """``value`` as the numeric distribution holds it: rounded to its step (an int for an integer
    one) and inside [low, high]."""
    if isinstance(dist, IntDistribution) or dist.step is not None:
        grid = dist.step or 1
        value = min(max(dist.low + round((value - dist.low) / grid) * grid, dist.low), dist.high)
        return int(value) if isinstance(dist, IntDistribution) else float(value)
    return float(min(max(value, dist.low), dist.high))


def _next_to(old, dist):
    """The neighbouring value of a discrete numeric parameter (``old`` when there is none)."""
    if not isinstance(dist, (FloatDistribution, IntDistribution)):
        return old
    step = dist.step or 1
    up = old + step
    new = up if up <= dist.high else old - step
    new = new if dist.low <= new <= dist.high else old
    return int(new) if isinstance(dist, IntDistribution) else float(new)


def unit_scale(dist):
    """(to [0, 1], from [0, 1]) for a numeric distribution, in log space when it is a log one."""
    low, high = float(dist.low), float(dist.high)
    if dist.log:
        lo, hi = math.log(low), math.log(high)
        return (lambda v: (math.log(v) - lo) / (hi - lo) if hi > lo else 0.0,
                lambda u: math.exp(lo + u * (hi - lo)))
    return (lambda v: (v - low) / (high - low) if high > low else 0.0, lambda u: low + u * (high - low))


def _reflect(u: float) -> float:
    """Folds a value back into [0, 1], so a step past an edge does not pile trials on the edge."""
    u = abs(u) % 2.0
    return 2.0 - u if u > 1.0 else u
