"""Our OptunaSearch: a persistent study, told the truth about every trial.

A trial stopped by the scheduler is PRUNED (with its intermediate values), a diverged or crashed one
FAILS, and only a trial that ended itself (its epochs done, or converged under dev-decay) is
COMPLETE, with its best epoch's value (what the leaderboard ranks by and promote picks). Upstream
OptunaSearch tells every stopped trial COMPLETE with its low-fidelity score, which teaches TPE that
2-epoch accuracies are final ones.

Ray pickles the searcher, its study and storage included, into ``searcher-state-*.pkl`` and
``tuner.pkl``: where the study lives and how it is opened is ``study_storage.py``.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import optuna
from ray.tune.search.optuna import OptunaSearch

from tuner.places import SearchPlaces
from tuner.search.samplers import build_sampler
from tuner.search.space import define_by_run, grid_points
# Saved searchers of team searches (before study_storage.py) name the class at this path.
from tuner.search.study_storage import EnvURLStorage  # noqa: F401
from tuner.search.study_storage import load_search_study, study_storage
from tuner.spec.model import SearchSpec
from trainables.status import COMPLETED, CONVERGED, DIVERGED

log = logging.getLogger(__name__)


def optuna_outcome(result: Optional[dict], *, error: bool, metric: str):
    """(state, value) to tell Optuna for a finished trial."""
    status = (result or {}).get("status")
    value = (result or {}).get(metric)
    if error or status == DIVERGED or value is None:
        return optuna.trial.TrialState.FAIL, None
    if status in (COMPLETED, CONVERGED):
        return optuna.trial.TrialState.COMPLETE, float(value)
    # Still "running" in its last report: the scheduler (or the time budget) stopped it early.
    return optuna.trial.TrialState.PRUNED, None


class TruthfulOptunaSearch(OptunaSearch):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Each running trial's best metric so far: a COMPLETE trial's value in the study is its best
        # epoch, the quantity the leaderboard ranks by and promote picks, not its last epoch.
        self._best_so_far: dict[str, float] = {}

    def _better(self, a: Optional[float], b: Optional[float]) -> Optional[float]:
        if a is None or b is None:
            return b if a is None else a
        return max(a, b) if self.mode == "max" else min(a, b)

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr("ray_trial_id", trial_id)
        return params

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        # The study is live while Ray snapshots the experiment every few seconds: a driver killed
        # after telling Optuna that a trial ended, but before the next snapshot, comes back with that
        # trial still to run (its last epoch again). Optuna refuses reports for a finished trial and
        # Ray would end the whole search on that error, so take the study's word for what is done.
        finished = {t.number for t in self._ot_study.get_trials(deepcopy=False)
                    if t.state.is_finished()}
        self._completed_trials |= {trial_id for trial_id, ot_trial in self._ot_trials.items()
                                   if ot_trial.number in finished}

    def on_trial_result(self, trial_id: str, result: dict):
        if trial_id in self._completed_trials:
            return  # told already (see restore): an epoch run again changes nothing the study holds
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            self._best_so_far[trial_id] = self._better(self._best_so_far.get(trial_id), float(value))
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        state, value = optuna_outcome(result, error=error, metric=self.metric)
        if state == optuna.trial.TrialState.COMPLETE:
            value = self._better(self._best_so_far.pop(trial_id, None), value)
        reached = (result or {}).get(self.metric)
        if state == optuna.trial.TrialState.PRUNED and reached is not None:
            # Ray hands the result on which the scheduler stops a trial to on_trial_complete only,
            # never to on_trial_result: record it, so the pruned trial keeps the value it reached.
            self._ot_trials[trial_id].report(float(reached), int(result.get("training_iteration", 0)))
        ot_trial = self._ot_trials[trial_id]
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except Exception as err:  # an already-finished trial after a restore, say
            stored = self._ot_study._storage.get_trial(ot_trial._trial_id).state
            # GridSampler stops the study once its grid is done, raising from tell after the
            # state is stored: the trial was told, nothing to warn about.
            (log.debug if stored.is_finished() else log.warning)(
                "could not tell Optuna about trial %s: %s", trial_id, err)
        self._completed_trials.add(trial_id)


def build_searcher(spec: SearchSpec, places: SearchPlaces, *, study_name: str,
                   warm_start: bool = True) -> TruthfulOptunaSearch:
    """OptunaSearch on a persistent study (a journal file beside the search's state, or the spec's
    storage URL: ``study_storage.py``).

    ``warm_start`` enqueues points_to_evaluate (and a conditional grid); an extension (--more) of
    an existing study must not enqueue them twice.
    """
    points = list(spec.points_to_evaluate) if warm_start else []
    if warm_start and spec.sampler.name == "grid" and any(p.when for p in spec.space):
        points += grid_points(spec.space)
    storage = study_storage(spec, places)
    return TruthfulOptunaSearch(
        space=define_by_run(spec.space),
        metric=spec.metric,
        mode=spec.mode,
        sampler=build_sampler(spec.sampler.name, space=spec.space, seed=spec.sampler.seed,
                              options=spec.sampler.options, max_concurrent=spec.budget.max_concurrent,
                              num_samples=spec.budget.num_samples),
        study_name=study_name,
        storage=storage,
        points_to_evaluate=points or None,
    )


def fail_orphaned_trials(spec: SearchSpec, places: SearchPlaces) -> int:
    """Optuna trials still RUNNING once the driver is done belong to no Ray trial any more (the
    driver was killed between asking Optuna and saving its state): tell Optuna they FAILED, so
    the study holds exactly the trials that ran."""
    study = load_search_study(spec, places)
    if study is None:
        return 0
    orphans = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for frozen in orphans:
        optuna.trial.Trial(study, frozen._trial_id).set_user_attr("tuner_orphaned", True)
        study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
    return len(orphans)
