"""The search driver: SearchSpec -> Ray Tune Tuner with OptunaSearch + a trial scheduler, run or resume.

Optuna is told the truth about every trial (``TruthfulOptunaSearch``): a trial stopped by the
scheduler is PRUNED (with its intermediate values), a diverged or crashed one FAILS, and only a trial
that ended itself (its epochs done, or converged under dev-decay) is COMPLETE. Upstream OptunaSearch
tells every stopped trial COMPLETE with its low-fidelity score, which teaches TPE that 2-epoch
accuracies are final ones.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tuner.errors import UserError
from tuner.redact import expand_env
from tuner.space import build_sampler, define_by_run, grid_points, grid_size
from tuner.spec import SearchSpec
from tuner.tracking import MlflowTracking
from trainables.trial import tune_trainable

log = logging.getLogger(__name__)


def optuna_outcome(result: Optional[dict], *, error: bool, metric: str):
    """(state, value) to tell Optuna for a finished trial."""
    status = (result or {}).get("status")
    value = (result or {}).get(metric)
    if error or status == "diverged" or value is None:
        return optuna.trial.TrialState.FAIL, None
    if status in ("completed", "converged"):
        return optuna.trial.TrialState.COMPLETE, float(value)
    # Still "running" in its last report: the scheduler (or the time budget) stopped it early.
    return optuna.trial.TrialState.PRUNED, None


class TruthfulOptunaSearch(OptunaSearch):
    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr("ray_trial_id", trial_id)
        return params

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        state, value = optuna_outcome(result, error=error, metric=self.metric)
        reached = (result or {}).get(self.metric)
        if state == optuna.trial.TrialState.PRUNED and reached is not None:
            # Ray hands the result on which the scheduler stops a trial to on_trial_complete only,
            # never to on_trial_result: record it, so the pruned trial keeps the value it reached.
            self._ot_trials[trial_id].report(float(reached), int(result.get("training_iteration", 0)))
        try:
            self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        except Exception as err:  # an already-finished trial after a restore, say
            log.warning("could not tell Optuna about trial %s: %s", trial_id, err)
        self._completed_trials.add(trial_id)


@dataclass(frozen=True)
class SearchPlaces:
    """Where a search keeps its results: Ray storage, MLflow, the Optuna study."""

    storage_path: str  # Ray's storage (local folder, or s3://… on a cluster)
    tracking_uri: str
    artifact_root: Optional[Path]
    state_dir: Path  # small local state: MLflow run ids

    def search_dir(self, name: str) -> str:
        return os.path.join(self.storage_path, name)


def optuna_storage_url(spec: SearchSpec, places: SearchPlaces) -> str:
    if spec.storage:
        return expand_env(spec.storage, what=f"{spec.source}: storage")
    return f"sqlite:///{(places.state_dir / 'optuna.db').resolve()}"


def build_searcher(spec: SearchSpec, places: SearchPlaces, *, study_name: str,
                   warm_start: bool = True) -> TruthfulOptunaSearch:
    """OptunaSearch on a persistent study (SQLite beside the results, or the spec's storage URL).

    ``warm_start`` enqueues points_to_evaluate (and a conditional grid); an extension (--more) of
    an existing study must not enqueue them twice.
    """
    points = list(spec.points_to_evaluate) if warm_start else []
    if warm_start and spec.sampler.name == "grid" and any(p.when for p in spec.space):
        points += grid_points(spec.space)
    places.state_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(optuna_storage_url(spec, places))
    return TruthfulOptunaSearch(
        space=define_by_run(spec.space),
        metric=spec.metric,
        mode=spec.mode,
        sampler=build_sampler(spec),
        study_name=study_name,
        storage=storage,
        points_to_evaluate=points or None,
    )


def build_scheduler(spec: SearchSpec):
    settings = spec.scheduler
    if settings.name == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",  # one report per epoch
            metric=spec.metric,
            mode=spec.mode,
            max_t=spec.epochs,
            grace_period=min(settings.grace_period, spec.epochs),
            reduction_factor=settings.reduction_factor,
        )
    if settings.name == "median":
        return MedianStoppingRule(
            time_attr="training_iteration", metric=spec.metric, mode=spec.mode,
            grace_period=settings.grace_period,
        )
    return FIFOScheduler()


def start_ray(address: Optional[str]) -> None:
    if ray.is_initialized():
        return
    # "local" starts a fresh embedded cluster; a plain ray.init() would try to join a stale one.
    from tuner.cluster import ray_address_from_env

    # `ray job submit` passes the cluster in $RAY_ADDRESS (tuner resume included).
    ray.init(address=address or ray_address_from_env() or "local", include_dashboard=False,
             log_to_driver=False, configure_logging=False)


def trial_dirname(trial) -> str:
    # Ray's default folder name spells out every config value and truncates it; the id is enough.
    return f"trial_{trial.trial_id}"


def _trainable(spec: SearchSpec):
    return tune.with_resources(tune_trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def build_tuner(spec: SearchSpec, places: SearchPlaces, tracking: MlflowTracking,
                *, experiment: Optional[tuple[str, str]] = None) -> tune.Tuner:
    searcher = build_searcher(spec, places, study_name=spec.name, warm_start=experiment is None)
    storage_path, name = experiment or (places.storage_path, spec.name)
    return tune.Tuner(
        _trainable(spec),
        param_space=spec.base_config(),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.budget.max_concurrent),
            scheduler=build_scheduler(spec),
            # A grid search runs its grid exactly once, whatever budget.num_samples says.
            num_samples=grid_size(spec.space) if spec.sampler.name == "grid" else spec.budget.num_samples,
            time_budget_s=spec.budget.time_budget_s,
            reuse_actors=False,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[tracking],
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2,  # the best by metric (for promote) and Ray keeps the latest (resume)
                checkpoint_score_attribute=spec.metric,
                checkpoint_score_order=spec.mode,
            ),
            # A trial may lose its node (spot reclaim) a few times and still resume from its checkpoint.
            failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
            verbose=1,
        ),
    )


def ensure_new_search(places: SearchPlaces, name: str) -> None:
    search_dir = places.search_dir(name)
    if "://" not in search_dir and Path(search_dir).exists():
        raise UserError(
            f"search {name!r} already exists in {places.storage_path}; "
            f"continue it with `tuner resume {name}` or choose another --name"
        )


def run_search(spec: SearchSpec, places: SearchPlaces, tracking: MlflowTracking,
               *, address: Optional[str] = None, experiment: Optional[tuple[str, str]] = None):
    """Runs a search to its end. ``experiment`` = (storage path, Ray experiment name) for a
    ``--more`` extension, which is a new Ray experiment continuing the same Optuna study."""
    start_ray(address)
    tuner = build_tuner(spec, places, tracking, experiment=experiment)
    try:
        return tuner.fit()
    finally:
        fail_orphaned_trials(spec, places)


def resume_search(spec: SearchSpec, places: SearchPlaces, *, address: Optional[str] = None):
    """Continues a search whose driver died: unfinished trials resume from their checkpoints, the
    searcher and the MLflow callback come back from the experiment state (same runs, same study)."""
    path = places.search_dir(spec.name)
    if not tune.Tuner.can_restore(path):
        raise UserError(f"search {spec.name!r} has no restorable state in {places.storage_path}")
    start_ray(address)
    tuner = tune.Tuner.restore(
        path, trainable=_trainable(spec), resume_unfinished=True, resume_errored=True,
        param_space=spec.base_config(),
    )
    try:
        return tuner.fit()
    finally:
        fail_orphaned_trials(spec, places)


def fail_orphaned_trials(spec: SearchSpec, places: SearchPlaces) -> int:
    """Optuna trials still RUNNING once the driver is done belong to no Ray trial any more (the
    driver was killed between asking Optuna and saving its state): tell Optuna they FAILED, so
    the study holds exactly the trials that ran."""
    try:
        study = optuna.load_study(study_name=spec.name, storage=optuna_storage_url(spec, places))
    except KeyError:
        return 0
    orphans = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for frozen in orphans:
        optuna.trial.Trial(study, frozen._trial_id).set_user_attr("tuner_orphaned", True)
        study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
    return len(orphans)
