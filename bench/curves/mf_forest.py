"""A multi-fidelity random-forest sampler for the benchmark: one model of val_acc over
(configuration, epoch), fitted on every epoch every trial reported, running ones included.

TPE ranks finished trials and models "good" against "bad"; under ASHA most trials stop after one
epoch and its ranking mixes fidelities (Optuna puts every COMPLETE trial above every PRUNED one).
A regression model can use all of it: a trial stopped at epoch 1 is one observation at epoch 1, a
trial still running at epoch 7 is seven. The forest learns, say, that adamw with a small width is
ahead at every epoch, from the many cheap epoch-1 observations, and predicts the highest fidelity
seen so far for candidates it has never seen (the way SMAC's random forest and the multi-fidelity
surrogates of DyHPO/freeze-thaw use learning curves, in their simplest form).

Each suggestion after the start-up:

* with probability ``random_fraction`` a uniform random configuration (SMAC's interleaving: the
  model is never trusted blindly);
* otherwise ``n_candidates`` candidates, half uniform over the space and half small changes of the
  best configurations seen so far (each parameter changes with chance 0.3, at least one), scored by
  the mean prediction of a random quarter of the trees at the highest epoch any trial reached.
  Scoring by a random subset of trees is a cheap Thompson sampling: concurrent suggestions made
  before any new result arrive at different candidates.

The model covers the parameters every trial has (Optuna's intersection search space); conditional
ones (``aug.min_scale`` under ``augmentation``) are sampled at random. Start-up: the product's
``startup_trials`` (a fifth of the budget, at least one batch of parallel trials), counted in
finished trials.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import FrozenTrial, TrialState

from tuner.search.near_best import changed, on_range, unit_scale
from tuner.search.options import Option
from tuner.search.samplers import SAMPLERS, SamplerEntry, startup_trials

OBSERVED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def encode(value: Any, dist: BaseDistribution) -> float:
    """A parameter value as a number in [0, 1] (log scale for log distributions; a categorical's
    index: the trees split its choices apart)."""
    if isinstance(dist, CategoricalDistribution):
        return dist.to_internal_repr(value) / max(1, len(dist.choices) - 1)
    return unit_scale(dist)[0](value)


def draw(dist: BaseDistribution, rng: np.random.RandomState) -> Any:
    """A uniform draw (over the log range for a log distribution), on the distribution's step."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[rng.randint(len(dist.choices))]
    return on_range(unit_scale(dist)[1](rng.uniform()), dist)


class MultiFidelityForestSampler(optuna.samplers.BaseSampler):
    def __init__(self, *, n_startup_trials: int, seed: Optional[int] = None, n_trees: int = 32,
                 n_candidates: int = 512, random_fraction: float = 0.2, top: int = 8):
        self._n_startup = n_startup_trials
        self._rng = np.random.RandomState(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._n_trees = n_trees
        self._n_candidates = n_candidates
        self._random_fraction = random_fraction
        self._top = top
        self._space = IntersectionSearchSpace(include_pruned=True)
        self.last_fidelity: Optional[int] = None  # the epoch the latest suggestion was scored at

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        space = self._space.calculate(study)
        return {n: d for n, d in space.items() if not d.single()}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def sample_relative(self, study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict:
        if not search_space:
            return {}
        trials = study._get_trials(deepcopy=False, states=OBSERVED, use_cache=True)
        if sum(t.state in FINISHED for t in trials) < self._n_startup:
            return {}  # independent (random) sampling: the start-up
        if self._rng.uniform() < self._random_fraction:
            return {n: draw(d, self._rng) for n, d in search_space.items()}
        names = sorted(search_space)
        rows, targets, best = [], [], []
        for t in trials:
            if not all(n in t.params for n in names) or not t.intermediate_values:
                continue
            x = [encode(t.params[n], search_space[n]) for n in names]
            curve = {s: v for s, v in t.intermediate_values.items() if v is not None and math.isfinite(v)}
            for step, value in curve.items():
                rows.append([*x, float(step)])
                targets.append(value)
            if curve:
                top_step = max(curve)
                best.append((top_step, max(curve.values()), t))
        if len(rows) < 2:
            return {}
        from sklearn.ensemble import RandomForestRegressor  # heavy: only once the model is used

        forest = RandomForestRegressor(n_estimators=self._n_trees, min_samples_leaf=2, max_features=0.6,
                                       random_state=int(self._rng.randint(2**31 - 1)))
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        forest.fit(np.asarray(rows), sign * np.asarray(targets))
        fidelity = max(step for step, _, _ in best)
        self.last_fidelity = int(fidelity)

        candidates = [{n: draw(search_space[n], self._rng) for n in names}
                      for _ in range(self._n_candidates // 2)]
        # The best so far: furthest first, then by value (a trial at epoch 9 above one stopped at 1).
        best.sort(key=lambda b: (b[0], sign * b[1]), reverse=True)
        parents = [b[2].params for b in best[: self._top]]
        while len(candidates) < self._n_candidates and parents:
            parent = parents[self._rng.randint(len(parents))]
            child = {n: parent[n] for n in names}
            change = [n for n in names if self._rng.uniform() < 0.3] or [names[self._rng.randint(len(names))]]
            for n in change:
                child[n] = changed(child[n], search_space[n], self._rng, step=0.15)
            candidates.append(child)
        X = np.asarray([[encode(c[n], search_space[n]) for n in names] + [float(fidelity)] for c in candidates])
        trees = self._rng.choice(len(forest.estimators_), size=max(4, len(forest.estimators_) // 4), replace=False)
        score = np.mean([forest.estimators_[i].predict(X) for i in trees], axis=0)
        return candidates[int(np.argmax(score))]


def register_mf_forest_sampler() -> None:
    """Adds the multi-fidelity forest to the product's sampler registry, for this process only."""
    if "mf-forest" in SAMPLERS:
        return

    def build(b):
        return MultiFidelityForestSampler(n_startup_trials=startup_trials(b), seed=b.seed,
                                          random_fraction=b.options["random_fraction"])

    SAMPLERS.register("mf-forest")(SamplerEntry(
        build=build, summary="random forest over (configuration, epoch) on every reported epoch (benchmark)",
        options={"random_fraction": Option(float, 0.2, minimum=0.0, maximum=1.0)}))
