"""The search driver: SearchSpec -> Ray Tune Tuner with our OptunaSearch + the spec's scheduler.

``run_search`` runs a search (or a ``--more`` extension of one) to its end; ``resume_search``
continues one whose driver died. What Optuna is told about each trial is in ``searcher.py``; what
the console shows while it runs, in ``console.py``: Ray's own progress output (a box per trial, a
table every 30 s) is off unless ``ray_output`` asks for it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional
from unittest import mock

import optuna
import pyarrow.fs
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from rich.console import Console

from tuner.cluster.connect import start_ray
from tuner.errors import UserError
from tuner.places import SearchPlaces
from tuner.redact import redact
from tuner.search.console import SearchConsole
from tuner.search.schedulers import build_scheduler
from tuner.search.seal import SealedSearchGenerator, seal_tuner_file, verify_search_state
from tuner.search.searcher import build_searcher, fail_orphaned_trials
from tuner.search.study_storage import has_default_study_file, study_location, study_storage
from tuner.search.space import grid_size
from tuner.spec.model import SearchSpec
from tuner.tracking.callback import MlflowTracking
from trainables.trial import tune_trainable

log = logging.getLogger(__name__)


def trial_dirname(trial) -> str:
    # Ray's default folder name spells out every config value and truncates it; the id is enough.
    return f"trial_{trial.trial_id}"


def trial_budget(spec: SearchSpec) -> int:
    """How many trials the search runs: a grid search runs its grid exactly once, whatever
    budget.num_samples says."""
    return grid_size(spec.space) if spec.sampler.name == "grid" else spec.budget.num_samples


def _verbosity(ray_output: bool) -> int:
    return 1 if ray_output else 0  # Ray's: 1 prints its experiment box, trial boxes and status tables


# Without ray_output, what verbose=0 leaves of Ray's output goes too (all read when ``fit`` starts):
# the new output engine prints its experiment box and result paths at any verbosity (the legacy one,
# at 0, prints nothing); the controller logs each failed trial's whole traceback (the console prints
# its last line and the error file instead); and short epochs make Ray warn, 3 lines each time, that
# the experiment snapshots our checkpoint_config forces "may become a bottleneck".
QUIET_RAY_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def _trainable(spec: SearchSpec, function: Callable[[dict], None]):
    return tune.with_resources(function, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def spec_scheduler(spec: SearchSpec):
    """The spec's trial scheduler, told the spec's points_to_evaluate (ASHA lets them run to the end)."""
    return build_scheduler(spec.scheduler.name, metric=spec.metric, mode=spec.mode, epochs=spec.epochs,
                           options=spec.scheduler.options, points=spec.points_to_evaluate,
                           searched=frozenset(p.name for p in spec.space))


def build_tuner(spec: SearchSpec, places: SearchPlaces, tracking: MlflowTracking,
                *, console: SearchConsole, ray_output: bool = False,
                experiment: Optional[tuple[str, str]] = None,
                trainable: Callable[[dict], None] = tune_trainable,
                stop: Optional[tune.Stopper] = None) -> tune.Tuner:
    """The Ray Tune Tuner of a search. ``trainable`` is the shared trainable; benchmarks and tests
    pass one that replays recorded curves, to run this same search path in simulated time, and a
    ``stop`` that ends the search once its epoch budget is spent."""
    searcher = build_searcher(spec, places, study_name=spec.name, warm_start=experiment is None)
    storage_path, name = experiment or (places.storage_path, spec.name)
    tuner = tune.Tuner(
        _trainable(spec, trainable),
        param_space=spec.base_config(),
        tune_config=tune.TuneConfig(
            # Signs Ray's state at every save, so that `tuner resume` unpickles only what a driver wrote.
            search_alg=SealedSearchGenerator(
                ConcurrencyLimiter(searcher, max_concurrent=spec.budget.max_concurrent)),
            scheduler=spec_scheduler(spec),
            num_samples=trial_budget(spec),
            time_budget_s=spec.budget.time_budget_s,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[tracking, console],
            stop=stop,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2,  # the best by metric (for promote) and Ray keeps the latest (resume)
                checkpoint_score_attribute=spec.metric,
                checkpoint_score_order=spec.mode,
            ),
            # A trial may lose its node (spot reclaim) a few times and still resume from its checkpoint.
            failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
            verbose=_verbosity(ray_output),
        ),
    )
    seal_tuner_file(os.path.join(storage_path, name))  # Ray has just written it, before any trial runs
    return tuner


def ensure_new_search(places: SearchPlaces, spec: SearchSpec) -> None:
    """A search name is never reused: refuses ``spec.name`` when its folder already exists in the
    storage (a local folder, or any URI pyarrow opens: file://, s3://, gs://) or when its Optuna
    study already exists in the study's storage (the spec's ``storage:``, or the default SQLite).
    Either would merge a new search into the old one's study and MLflow parent run. ``tuner resume``
    (and ``--more``) continue an existing search and do not come here."""
    name = spec.name
    again = f"continue it with `tuner resume {name}` (or `tuner resume {name} --more N`) or choose another --name"
    if _search_dir_exists(places, name):
        raise UserError(f"search {name!r} already exists in {redact(places.storage_path)}; {again}")
    if _study_exists(spec, places):
        where = redact(spec.storage) if spec.storage else study_location(spec, places)
        raise UserError(f"search {name!r}: an Optuna study named {name!r} already exists in {where}; {again}")


def _search_dir_exists(places: SearchPlaces, name: str) -> bool:
    search_dir = places.search_dir(name)
    if "://" not in search_dir:
        return Path(search_dir).exists()
    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(search_dir)
        return filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    except (OSError, ValueError, ImportError) as err:  # pyarrow's errors derive from these
        raise UserError(
            f"--storage {redact(places.storage_path)}: cannot check whether search {name!r} already "
            f"exists there ({_first_line(err)}); check the URI and this machine's credentials"
        ) from None


def _study_exists(spec: SearchSpec, places: SearchPlaces) -> bool:
    if not has_default_study_file(spec, places):
        return False  # the default file is made by the search itself: none yet, no study
    location = study_location(spec, places)  # an unset ${VAR} is a UserError naming it
    try:
        return spec.name in optuna.study.get_all_study_names(storage=study_storage(spec, places))
    except Exception as err:  # SQLAlchemy's errors: unreachable server, bad URL, missing driver
        where = redact(spec.storage) if spec.storage else location
        raise UserError(
            f"search {spec.name!r}: cannot open the Optuna storage {where} ({_first_line(err)})"
        ) from None


def _first_line(err: BaseException) -> str:
    return redact(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)


def run_search(spec: SearchSpec, places: SearchPlaces, tracking: MlflowTracking,
               *, address: Optional[str] = None, experiment: Optional[tuple[str, str]] = None,
               trainable: Callable[[dict], None] = tune_trainable, stop: Optional[tune.Stopper] = None,
               ray_output: bool = False, screen: Optional[Console] = None):
    """Runs a search to its end. ``experiment`` = (storage path, Ray experiment name) for a
    ``--more`` extension, which is a new Ray experiment continuing the same Optuna study.
    ``screen``: where the console writes (default: stdout)."""
    start_ray(address)
    console = SearchConsole(spec, budget=trial_budget(spec), console=screen)
    tuner = build_tuner(spec, places, tracking, console=console, ray_output=ray_output,
                        experiment=experiment, trainable=trainable, stop=stop)
    return _fit(tuner, console, spec, places, ray_output=ray_output)


def resume_search(spec: SearchSpec, places: SearchPlaces, *, address: Optional[str] = None,
                  ray_output: bool = False, screen: Optional[Console] = None, trust_storage: bool = False,
                  trainable: Callable[[dict], None] = tune_trainable):
    """Continues a search whose driver died: unfinished trials resume from their checkpoints, the
    searcher and the MLflow callback come back from the experiment state (same runs, same study).
    Ray unpickles that state: unless ``trust_storage``, every file of it must carry the driver's
    seal (``seal.py``)."""
    path = places.search_dir(spec.name)
    if not tune.Tuner.can_restore(path):
        raise UserError(f"search {spec.name!r} has no restorable state in {places.storage_path}")
    if trust_storage:
        log.warning("search %s: resuming without checking the seal of its Ray state in %s (--trust-storage)",
                    spec.name, redact(path))
    else:
        verify_search_state(path, spec.name)
    # The saved searcher opens the study again by expanding the storage's ${VAR}: an unset one
    # fails here, in one line, before Ray starts and unpickles it.
    study_location(spec, places)
    start_ray(address)
    tuner = tune.Tuner.restore(
        path, trainable=_trainable(spec, trainable), resume_unfinished=True, resume_errored=True,
        param_space=spec.base_config(),
    )
    console = SearchConsole(spec, budget=trial_budget(spec), console=screen)
    _show_on_this_console(tuner, console, ray_output=ray_output)
    return _fit(tuner, console, spec, places, ray_output=ray_output)


def _fit(tuner: tune.Tuner, console: SearchConsole, spec: SearchSpec, places: SearchPlaces,
         *, ray_output: bool):
    try:
        # Set for this fit only, then put back as they were (patch.dict restores os.environ).
        with mock.patch.dict(os.environ, {} if ray_output else QUIET_RAY_ENV):
            return tuner.fit()
    finally:
        console.close()  # a driver interrupted mid-search gives the terminal back as it was
        fail_orphaned_trials(spec, places)


def _show_on_this_console(tuner: tune.Tuner, console: SearchConsole, *, ray_output: bool) -> None:
    """A restored Tuner runs with the RunConfig pickled when the search started: its console
    (none, for a search started before there was one) and its Ray verbosity. This resume's own take
    their place. Ray has no public way to change a restored RunConfig: ``get_run_config`` of its
    TunerInternal hands out the very one ``fit`` reads."""
    run_config = tuner._local_tuner.get_run_config()
    kept = [c for c in run_config.callbacks or [] if not isinstance(c, SearchConsole)]
    run_config.callbacks = [*kept, console]
    run_config.verbose = _verbosity(ray_output)
