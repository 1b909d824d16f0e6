"""MLflow as the leaderboard: one writer on the driver, a run tree, restart-safe run ids.

Ray's MLflowLoggerCallback logs ``config/*``, ``pid`` and ``timestamp`` as metrics, has no parent run,
and duplicates runs after a restore. This callback writes a parent run per search and one child run per
trial (``mlflow.parentRunId``) with clean params, per-epoch metrics (``step=epoch``) and a
``tuner.status`` tag. Run ids are persisted in the search's folder, so a resumed search continues the
same runs instead of starting new ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

log = logging.getLogger(__name__)

METRIC_NAMES = (
    "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "epoch",
    "epoch_time_s", "images_per_s", "skipped_images",
)
TRIAL_STATUSES = ("running", "completed", "early_stopped", "converged", "diverged", "failed")
STATE_FILE = "tuner_mlflow_runs.json"
KIND_TAG, STATUS_TAG, SEARCH_TAG, TRIAL_TAG = "tuner.kind", "tuner.status", "tuner.search", "tuner.trial_id"
CHECKPOINT_TAG = "tuner.best_checkpoint"
PARENT_TAG = "mlflow.parentRunId"


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Optional[Path]) -> str:
    """The search's experiment; with a SQLite store its artifacts go to an absolute local folder."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (artifact_root / name).resolve().as_uri() if artifact_root else None
    return client.create_experiment(name, artifact_location=location)


def trial_status(result: Optional[dict], *, errored: bool) -> str:
    """Maps how a trial ended to the tuner.status vocabulary.

    The trainable marks its own last report ``completed``/``converged``/``diverged``; a last report
    still saying ``running`` means something outside the trial (the scheduler) stopped it.
    """
    if errored:
        return "failed"
    status = (result or {}).get("status")
    if status in ("completed", "converged", "diverged"):
        return status
    return "early_stopped"


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def run_name(config: dict) -> str:
    """A leaderboard-readable name: ``resnet18 w0.5 lr=0.031 bs=64 sgd``."""
    parts = [str(config.get("arch", "?"))]
    if config.get("width", 1.0) != 1.0:
        parts.append(f"w{config['width']:g}")
    if config.get("growth_rate"):
        parts.append(f"k{config['growth_rate']}")
    parts.append(f"lr={config.get('lr', float('nan')):.3g}")
    parts.append(f"bs={config.get('batch_size', '?')}")
    parts.append(str(config.get("optimizer", "")))
    return " ".join(parts)


class MlflowTracking(Callback):
    """Ray Tune callback that owns every MLflow write of a search (driver side)."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        search_name: str,
        state_dir: Path,
        artifact_root: Optional[Path],
        search_params: dict[str, Any],
        search_tags: dict[str, str],
        spec_file: Optional[Path] = None,
        metric: str = "val_acc",
        mode: str = "max",
    ) -> None:
        self.tracking_uri = tracking_uri
        self.search_name = search_name
        self.state_dir = Path(state_dir)
        self.artifact_root = artifact_root
        self.search_params = search_params
        self.search_tags = search_tags
        self.spec_file = spec_file
        self.metric, self.mode = metric, mode
        self._client: Optional[MlflowClient] = None
        self._state: Optional[dict] = None

    # Ray pickles callbacks with the experiment state: keep the client out of the pickle.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None, "_state": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    @property
    def state(self) -> dict:
        if self._state is None:
            path = self.state_dir / STATE_FILE
            self._state = json.loads(path.read_text()) if path.is_file() else {"trials": {}}
        return self._state

    def _save_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / STATE_FILE
        partial = path.with_suffix(".part")
        partial.write_text(json.dumps(self.state, indent=1))
        os.replace(partial, path)

    # --- the search (parent run) ---
    def setup(self, **info) -> None:
        experiment_id = ensure_experiment(self.client, self.search_name, self.artifact_root)
        self.state["experiment_id"] = experiment_id
        if self.state.get("parent_run_id"):
            self.client.set_tag(self.state["parent_run_id"], STATUS_TAG, "running")
            self.client.update_run(self.state["parent_run_id"], status="RUNNING")
            return
        run = self.client.create_run(
            experiment_id,
            run_name=f"search {self.search_name}",
            tags={KIND_TAG: "search", SEARCH_TAG: self.search_name, STATUS_TAG: "running",
                  **self.search_tags},
        )
        self.state["parent_run_id"] = run.info.run_id
        self._save_state()
        params = [Param(k, str(v)[:6000]) for k, v in flatten(self.search_params).items()]
        self.client.log_batch(run.info.run_id, params=params)
        if self.spec_file is not None and self.spec_file.is_file():
            self.client.log_artifact(run.info.run_id, str(self.spec_file))

    # --- trials (child runs) ---
    def _child_run(self, trial) -> str:
        known = self.state["trials"].get(trial.trial_id)
        if known:
            return known["run_id"]
        config = dict(trial.config)
        run = self.client.create_run(
            self.state["experiment_id"],
            run_name=run_name(config),
            tags={
                PARENT_TAG: self.state["parent_run_id"], KIND_TAG: "trial",
                SEARCH_TAG: self.search_name, TRIAL_TAG: trial.trial_id, STATUS_TAG: "running",
                **({"tuner.finetune": "head-only"} if config.get("finetune") == "head" else {}),
                **self.search_tags,
            },
        )
        self.state["trials"][trial.trial_id] = {"run_id": run.info.run_id, "best": None}
        self._save_state()
        params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=params[start : start + 100])
        return run.info.run_id

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        run_id = self._child_run(trial)
        self.client.set_tag(run_id, STATUS_TAG, "running")
        self.client.update_run(run_id, status="RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self._child_run(trial)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        timestamp = int(result.get("timestamp", 0) * 1000) or None
        metrics = []
        for name in METRIC_NAMES:
            value = result.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.append(Metric(name, float(value), timestamp or 0, epoch))
        value = result.get(self.metric)
        entry = self.state["trials"][trial.trial_id]
        if isinstance(value, (int, float)) and math.isfinite(value):
            better = entry["best"] is None or (
                value > entry["best"] if self.mode == "max" else value < entry["best"]
            )
            if better:
                entry["best"] = float(value)
                self._save_state()
            metrics.append(Metric(f"best_{self.metric}", entry["best"], timestamp or 0, epoch))
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish_trial(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish_trial(trial, errored=True)

    def _finish_trial(self, trial, *, errored: bool) -> None:
        run_id = self._child_run(trial)
        status = trial_status(trial.last_result, errored=errored)
        tags = [RunTag(STATUS_TAG, status)]
        best = _best_checkpoint_path(trial)
        if best:
            tags.append(RunTag(CHECKPOINT_TAG, best))
        self.client.log_batch(run_id, tags=tags)
        self.client.update_run(run_id, status="FAILED" if status == "failed" else "FINISHED")

    def on_experiment_end(self, trials, **info) -> None:
        parent = self.state.get("parent_run_id")
        if not parent:
            return
        counts = {s: 0 for s in TRIAL_STATUSES}
        for trial in trials:
            counts[trial_status(trial.last_result, errored=trial.status == "ERROR")] += 1
        bests = [t["best"] for t in self.state["trials"].values() if t["best"] is not None]
        metrics = [Metric(f"trials_{status}", n, 0, 0) for status, n in counts.items() if status != "running"]
        if bests:
            best = max(bests) if self.mode == "max" else min(bests)
            metrics.append(Metric(f"best_{self.metric}", best, 0, 0))
        self.client.log_batch(parent, metrics=metrics, tags=[RunTag(STATUS_TAG, "completed")])
        self.client.update_run(parent, status="FINISHED")


def _best_checkpoint_path(trial) -> Optional[str]:
    """The checkpoint with the best score that Ray kept (falls back to the latest one)."""
    manager = getattr(trial.run_metadata, "checkpoint_manager", None)
    result = getattr(manager, "best_checkpoint_result", None) if manager else None
    checkpoint = result.checkpoint if result is not None else trial.checkpoint
    return checkpoint.path if checkpoint is not None else None
