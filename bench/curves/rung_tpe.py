"""A BOHB-style TPE for the benchmark: the model is fitted on ONE fidelity, the highest rung with
enough finished observations, instead of on a mix of pruned low-epoch and complete full-epoch trials.

``RungTPESampler`` wraps the product's TPESampler (``tuner.search.samplers``' ``tpe`` entry, built
with the same options: multivariate, grouped for conditional spaces, constant liar when trials run
concurrently, the start-up sized to the budget) and hands it, on every call, a VIEW of the study:

* the fidelity ``b`` is the highest step (epoch) that at least ``min_points`` finished (COMPLETE or
  PRUNED) trials reached; a trial's reach is its last reported step, a COMPLETE trial reaches every
  step (it ended by itself: a trial that converged early would not have improved);
  ``min_points`` defaults to max(n_startup_trials, number of searched parameters + 1), BOHB's N_min;
* every finished trial that reached ``b`` appears COMPLETE with value = its best intermediate value
  at steps <= b (a COMPLETE trial without intermediate values: its own value);
* finished trials that did not reach ``b`` are left out, or (``keep_lower``) kept as they are,
  PRUNED, which Optuna ranks below every COMPLETE one (by their last step, then their value);
* RUNNING, WAITING and FAIL trials are left as they are (the constant liar needs the RUNNING ones);
* when no step has ``min_points`` finished trials, the study is handed over unchanged (TPE's own
  start-up and pruned-trial handling).

``BestValueTPESampler`` is the fidelity-blind variant (``tpe-best``): once ``min_points`` trials
finished, every finished trial appears COMPLETE with its best intermediate value at any step. Optuna
ranks every COMPLETE trial above every PRUNED one, so under ASHA its "good" density is the first
trials promoted to the end for want of rivals (say 0.33), above a trial stopped at 9 epochs with
0.43; ranked by best value, the second is the better one, as the leaderboard ranks them.

The view is a thin proxy: it overrides ``_get_trials``/``get_trials``/``trials`` and forwards every
other attribute (storage, directions, study id) to the real study. Finished trials never change, so
their reach and their converted copies (shallow copies: params and distributions are shared, not
copied) are cached per trial; a call costs one pass over the study's trials.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from typing import Any, Container, Optional, Sequence

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.search.options import Option
from tuner.search.samplers import SAMPLERS, SamplerEntry, startup_trials

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def default_min_points(n_startup_trials: int, n_params: int) -> int:
    """BOHB's N_min (dimensions + 1), and never fewer than TPE's own start-up."""
    return max(n_startup_trials, n_params + 1)


class RungStudyView:
    """The study as TPE should see it at one fidelity (see the module docstring); every attribute
    but the trial lists is the real study's."""

    def __init__(self, study: optuna.Study, sampler: "RungTPESampler"):
        object.__setattr__(self, "_study", study)
        object.__setattr__(self, "_sampler", sampler)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._study, name, value)

    def _get_trials(self, deepcopy: bool = True, states: Optional[Container[TrialState]] = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        trials = self._sampler.view_trials(self._study, self._study._get_trials(
            deepcopy=False, states=None, use_cache=use_cache))
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trials(self, deepcopy: bool = True, states: Optional[Container[TrialState]] = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states, use_cache=False)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class RungTPESampler(BaseSampler):
    """TPE fitted on the highest rung with ``min_points`` finished observations (BOHB-style)."""

    def __init__(self, tpe: optuna.samplers.TPESampler, *, min_points: int, keep_lower: bool = False):
        if min_points < 1:
            raise ValueError(f"min_points must be >= 1, got {min_points}")
        self.tpe = tpe
        self.min_points = min_points
        self.keep_lower = keep_lower
        self._reach: dict = {}  # (study id, trial id) -> (last step or inf, {step: value} sorted)
        self._converted: dict = {}  # (study id, trial id, b) -> the trial as seen at fidelity b
        self.last_fidelity: Optional[int] = None  # b of the latest view (None: passed through)

    def __getstate__(self) -> dict:  # Ray pickles the searcher: the caches stay behind
        return {**self.__dict__, "_reach": {}, "_converted": {}}

    # --- the view ---------------------------------------------------------------------------------

    def _trial_reach(self, study_id: int, trial: FrozenTrial) -> float:
        key = (study_id, trial._trial_id)
        reach = self._reach.get(key)
        if reach is None:
            steps = trial.intermediate_values
            reach = math.inf if trial.state == TrialState.COMPLETE else (max(steps) if steps else -math.inf)
            self._reach[key] = reach
        return reach

    def fidelity(self, study: optuna.Study, trials: Sequence[FrozenTrial]) -> Optional[int]:
        """The highest reported step that ``min_points`` finished trials reached (None: none did)."""
        finished = [t for t in trials if t.state in FINISHED]
        if len(finished) < self.min_points:
            return None
        reaches = sorted((self._trial_reach(study._study_id, t) for t in finished), reverse=True)
        cap = reaches[self.min_points - 1]  # min_points trials reached at least this step
        steps = [s for t in finished for s in t.intermediate_values if s <= cap]
        return max(steps) if steps else None

    def _at_fidelity(self, study: optuna.Study, trial: FrozenTrial, b: int) -> Optional[FrozenTrial]:
        """The finished ``trial`` as seen at fidelity ``b``: COMPLETE with its best value up to b, the
        trial itself (PRUNED) when keep_lower and it did not reach b, or None (left out)."""
        key = (study._study_id, trial._trial_id, b)
        if key in self._converted:
            return self._converted[key]
        seen = None
        if self._trial_reach(study._study_id, trial) >= b:
            values = [v for s, v in trial.intermediate_values.items() if s <= b and math.isfinite(v)]
            if values:
                value = max(values) if study.direction == StudyDirection.MAXIMIZE else min(values)
            elif trial.state == TrialState.COMPLETE and not trial.intermediate_values:
                value = trial.value
            else:
                value = None
            if value is not None:
                seen = copy.copy(trial)  # shallow: params, distributions and attributes are shared
                seen.state = TrialState.COMPLETE
                seen.value = float(value)
                seen.intermediate_values = {s: v for s, v in trial.intermediate_values.items() if s <= b}
        if seen is None and self.keep_lower:
            seen = trial
            if trial.state != TrialState.PRUNED:  # a COMPLETE one without a usable value up to b
                seen = copy.copy(trial)
                seen.state, seen.value = TrialState.PRUNED, None
        self._converted[key] = seen
        return seen

    def view_trials(self, study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """All of ``trials`` as TPE should see them (in order; see the module docstring)."""
        b = self.fidelity(study, trials)
        self.last_fidelity = b
        if b is None:
            return trials
        out = []
        for trial in trials:
            if trial.state not in FINISHED:
                out.append(trial)
                continue
            seen = self._at_fidelity(study, trial, b)
            if seen is not None:
                out.append(seen)
        return out

    def view(self, study: optuna.Study) -> RungStudyView:
        return RungStudyView(study, self)

    # --- the sampler interface: TPE on the view -----------------------------------------------------

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.tpe.infer_relative_search_space(self.view(study), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.tpe.sample_relative(self.view(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.tpe.sample_independent(self.view(study), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.tpe.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Optional[Sequence[float]]) -> None:
        self.tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.tpe.reseed_rng()


class BestValueTPESampler(RungTPESampler):
    """TPE on every finished trial as COMPLETE with its best value at any step (see the module
    docstring); the study unchanged until ``min_points`` trials finished."""

    def view_trials(self, study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        if sum(t.state in FINISHED for t in trials) < self.min_points:
            self.last_fidelity = None
            return trials
        self.last_fidelity = math.inf
        return [self._best_value(study, t) if t.state in FINISHED else t for t in trials]

    def _best_value(self, study: optuna.Study, trial: FrozenTrial) -> FrozenTrial:
        key = (study._study_id, trial._trial_id, "best")
        if key not in self._converted:
            values = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
            if trial.state == TrialState.COMPLETE and trial.value is not None and math.isfinite(trial.value):
                values.append(trial.value)
            seen = trial  # a finished trial without a usable value stays as it is
            if values:
                seen = copy.copy(trial)  # shallow: params, distributions and attributes are shared
                seen.state = TrialState.COMPLETE
                seen.value = float(max(values) if study.direction == StudyDirection.MAXIMIZE else min(values))
            self._converted[key] = seen
        return self._converted[key]


def build_rung_tpe(b, *, keep_lower: bool = False, best_value: bool = False) -> RungTPESampler:
    """A ``tuner.search.samplers`` builder: the product's ``tpe`` entry, built with the ``tpe``
    options of ``b``, wrapped; ``min_points`` None: default_min_points."""
    tpe_entry = SAMPLERS.get("tpe")
    tpe_options = {k: b.options[k] for k in tpe_entry.options}
    tpe = tpe_entry.build(dataclasses.replace(b, options=tpe_options))
    startup = startup_trials(b) if tpe_options["n_startup_trials"] is None else tpe_options["n_startup_trials"]
    if best_value:  # fidelity-blind: it needs only TPE's own start-up
        return BestValueTPESampler(tpe, min_points=b.options.get("min_points") or max(startup, 1))
    min_points = b.options.get("min_points") or default_min_points(startup, len(b.space))
    return RungTPESampler(tpe, min_points=min_points, keep_lower=keep_lower)


def register_rung_tpe_sampler() -> None:
    """Adds this module's BOHB-style TPE (the product's TPE fitted on the highest rung with enough
    finished trials) to the product's sampler registry, for this process only, as
    ``tpe-rung`` (trials below that rung left out) and ``tpe-rung-keep`` (kept as PRUNED)."""
    if "tpe-rung" in SAMPLERS:
        return
    tpe = SAMPLERS.get("tpe")
    options = {**tpe.options, "min_points": Option(int, None, minimum=1, help="finished trials a rung needs "
                                                   "(default: max(n_startup_trials, parameters + 1))")}
    for name, keep, what in (("tpe-rung", False, "lower rungs left out"),
                             ("tpe-rung-keep", True, "lower rungs kept as PRUNED")):
        SAMPLERS.register(name)(SamplerEntry(
            build=functools.partial(build_rung_tpe, keep_lower=keep), kinds=tpe.kinds, options=options,
            summary=f"TPE on the highest rung with enough finished trials, {what} (benchmark)"))
    SAMPLERS.register("tpe-best")(SamplerEntry(
        build=functools.partial(build_rung_tpe, best_value=True), kinds=tpe.kinds, options=options,
        summary="TPE on every finished trial ranked by its best value at any epoch (benchmark)"))
