"""``tuner status NAME``: the live view's summary of a search running elsewhere (another shell, a
cluster's driver, a CI job), read back from where the search writes.

MLflow holds every trial the driver has started (its ``tuner.status`` tag, epoch, metric, best so
far, params); the Optuna study holds the trials the searcher has proposed that Ray has not started
yet (pending). The saved definition (``tuner resume``'s) says where both are and the trial budget.
"""

from __future__ import annotations

import time
from typing import Optional

import optuna

from trainables.status import COMPLETED
from tuner.search.console import PENDING, SearchView, TrialRow, summary_lines
from tuner.search.definition import load_definition
from tuner.places import SearchPlaces
from tuner.search.driver import trial_budget
from tuner.search.study_storage import load_search_study
from tuner.spec.model import SearchSpec
from tuner.tracking.leaderboard import find_search, trial_runs
from tuner.tracking.store import open_client, tracking_errors
from tuner.tracking.tags import STATUS_TAG, TRIAL_TAG


def search_status(name: str, storage: Optional[str] = None) -> list[str]:
    """The lines ``tuner status`` prints."""
    return summary_lines(load_view(name, storage))


def load_view(name: str, storage: Optional[str] = None) -> SearchView:
    definition, places, spec = load_definition(name, storage)
    client = open_client(places.tracking_uri)
    with tracking_errors(places.tracking_uri):
        _, parent = find_search(client, name)
        runs = trial_runs(client, parent.info.experiment_id, parent.info.run_id)
    rows = [_row(run, spec) for run in runs]
    rows += _pending(spec, places, started={r.trial_id for r in rows})
    finished = parent.data.tags.get(STATUS_TAG) == COMPLETED  # the tracking callback's, at the end
    end_ms = parent.info.end_time if finished and parent.info.end_time else time.time() * 1000
    extensions = sum(e["num_samples"] for e in definition.get("extensions", []))  # --more
    return SearchView(name, spec.metric, spec.mode, trial_budget(spec) + extensions,
                      (end_ms - parent.info.start_time) / 1000, spec.budget.time_budget_s, finished,
                      sorted(rows, key=lambda r: r.trial_id))


def _row(run, spec: SearchSpec) -> TrialRow:
    """A trial as its MLflow run has it: params as text, the last value of each metric."""
    params, metrics = run.data.params, run.data.metrics
    return TrialRow(
        run.data.tags.get(TRIAL_TAG, "?"), run.data.tags.get(STATUS_TAG, "?"),
        {p.name: _param(params[p.name]) for p in spec.space if p.name in params},
        int(params.get("epochs", spec.epochs)), int(metrics.get("epoch", 0)),
        metrics.get(spec.metric), metrics.get(f"best_{spec.metric}"), metrics.get("images_per_s"),
    )


def _param(text: str):
    """MLflow keeps params as text: numbers come back as numbers, shown as the live view shows them."""
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if text.lstrip("-").isdigit() else number


def _pending(spec: SearchSpec, places: SearchPlaces, *, started: set[str]) -> list[TrialRow]:
    """Trials the searcher proposed (RUNNING in Optuna) that have no MLflow run yet."""
    study = load_search_study(spec, places)
    if study is None:  # no study yet: the driver has not asked for a trial
        return []
    return [
        TrialRow(t.user_attrs.get("ray_trial_id", f"optuna-{t.number}"), PENDING,
                 dict(t.params), spec.epochs)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if t.user_attrs.get("ray_trial_id") not in started
    ]
