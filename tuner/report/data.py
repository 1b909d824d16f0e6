"""What a search report shows, read back from where the search keeps it.

MLflow is the source of the trials (their per-epoch metric with its time, start, status, params):
it holds every trial of every driver that ran the search (``tuner resume`` and ``--more`` included),
exactly as the leaderboard and the UI show them. The spec adds what MLflow does not record: the
scale of each searched parameter (log or not, the order of a choice's options) and the scheduler's
rungs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from mlflow.tracking import MlflowClient

from trainables.status import COMPLETED, FAILED, RUNNING
from tuner.places import SearchPlaces
from tuner.spec.model import SearchSpec
from tuner.tracking.leaderboard import Board, find_search, load_board, trial_runs
from tuner.tracking.store import open_client, tracking_errors
from tuner.tracking.tags import STATUS_TAG, TRIAL_TAG

CATEGORICAL = ("choice", "grid")
EPOCH_TIME = "epoch_time_s"  # what each epoch's training and validation took, as the trial reports it


@dataclass(frozen=True)
class Point:
    """One reported epoch of a trial."""

    epoch: int
    value: float
    time_s: float  # since the search started (its parent run's start)


@dataclass
class TrialData:
    trial: str  # Ray's trial id, as the leaderboard shows it
    run_id: str
    name: str
    status: str  # the tuner.status tag
    params: dict[str, str]  # the searched ones, as MLflow stores them (text)
    curve: list[Point]  # the search metric per epoch, in epoch order (finite values only)
    epochs: int  # the last epoch it reported, finite metric or not
    start_s: float
    end_s: float
    best: Optional[float]  # best_<metric> over its epochs, as the leaderboard ranks it
    compute_s: float = 0.0  # its epochs' own seconds (train + validation: epoch_time_s, summed)


@dataclass(frozen=True)
class Axis:
    """How a searched parameter is drawn: numeric (maybe log) between its bounds, or categorical."""

    name: str
    log: bool = False
    low: Optional[float] = None
    high: Optional[float] = None
    choices: tuple[str, ...] = ()  # categorical: the spec's options, as MLflow writes them

    @property
    def categorical(self) -> bool:
        return bool(self.choices)


@dataclass
class SearchData:
    search: str
    metric: str
    mode: str
    parent_run_id: str
    epochs: int  # every trial's full length
    max_concurrent: int
    scheduler: str
    rungs: list[float]  # ASHA's milestones below `epochs` (none for other schedulers)
    axes: list[Axis]
    trials: list[TrialData]  # in start order
    board: Board


def gather(name: str, places: SearchPlaces, spec: SearchSpec) -> SearchData:
    """Every trial of search ``name`` from MLflow; a UserError when MLflow is unreachable or holds
    no such search."""
    client = open_client(places.tracking_uri)
    with tracking_errors(places.tracking_uri):
        experiment, parent = find_search(client, name)
        runs = trial_runs(client, experiment.experiment_id, parent.info.run_id)
        axes = [axis_of(p) for p in spec.space]
        trials = [read_trial(client, run, spec.metric, parent.info.start_time, axes) for run in runs]
    return SearchData(
        search=name, metric=spec.metric, mode=spec.mode, parent_run_id=parent.info.run_id,
        epochs=spec.epochs, max_concurrent=spec.budget.max_concurrent, scheduler=spec.scheduler.name,
        rungs=asha_rungs(spec), axes=axes, trials=sorted(trials, key=lambda t: t.start_s),
        board=load_board(client, name),
    )


def axis_of(param) -> Axis:
    if param.kind in CATEGORICAL:
        # MLflow stores params as str(value): compare the options the same way.
        return Axis(param.name, choices=tuple(str(c) for c in param.choices))
    return Axis(param.name, log=param.log, low=float(param.low), high=float(param.high))


def read_trial(client: MlflowClient, run, metric: str, search_start_ms: int,
               axes: list[Axis]) -> TrialData:
    history = client.get_metric_history(run.info.run_id, metric)
    curve = sorted((Point(int(m.step), m.value, (m.timestamp - search_start_ms) / 1000)
                    for m in history if math.isfinite(m.value)), key=lambda p: p.epoch)
    last_epoch = int(run.data.metrics.get("epoch", max((m.step for m in history), default=0)))
    start_s = (run.info.start_time - search_start_ms) / 1000
    # The tracking callback ends a trial run with update_run, which leaves end_time unset: the
    # trial's last report is when it stopped training (Ray stamps reports to the second).
    if run.info.end_time:
        end_s = (run.info.end_time - search_start_ms) / 1000
    else:
        end_s = max((m.timestamp - search_start_ms) / 1000 for m in history) if history else start_s
    return TrialData(
        trial=run.data.tags.get(TRIAL_TAG, "?"), run_id=run.info.run_id, name=run.info.run_name,
        status=run.data.tags.get(STATUS_TAG, RUNNING),
        params={a.name: run.data.params[a.name] for a in axes if a.name in run.data.params},
        curve=curve, epochs=last_epoch, start_s=start_s, end_s=max(start_s, end_s),
        best=run.data.metrics.get(f"best_{metric}"),
        compute_s=sum(m.value for m in client.get_metric_history(run.info.run_id, EPOCH_TIME)
                      if math.isfinite(m.value)),
    )


def asha_rungs(spec: SearchSpec) -> list[float]:
    """The epochs at which ASHA compares trials: grace_period * reduction_factor**k, as
    ``tuner.search.schedulers`` builds it (grace capped at the epochs). A rung at the last epoch
    stops nothing, so only those below it are drawn."""
    if spec.scheduler.name != "asha":
        return []
    rung = float(min(spec.scheduler.options["grace_period"], spec.epochs))
    factor = float(spec.scheduler.options["reduction_factor"])
    rungs = []
    while rung < spec.epochs:
        rungs.append(rung)
        rung *= factor
    return rungs


def end_reason(trial: TrialData) -> str:
    """Why a trial ended, in the words of ``tuner.status``, with the epoch where it tells something
    (the scheduler's rung, where the loss blew up)."""
    if trial.status in (RUNNING, FAILED) or not trial.epochs:
        return trial.status
    if trial.status == COMPLETED:
        return f"{COMPLETED} ({trial.epochs} epochs)"
    return f"{trial.status} at epoch {trial.epochs}"
