"""MLflow as the leaderboard: one writer on the driver, a run tree, restart-safe run ids.

Ray's MLflowLoggerCallback logs ``config/*``, ``pid`` and ``timestamp`` as metrics, has no parent run,
and duplicates runs after a restore. ``MlflowTracking`` is a Ray Tune callback that writes:

- the search as a parent run: the spec as an artifact, sampler/scheduler/budget settings as params,
  and at the end a summary (``best_<metric>``, ``trials_<status>`` counts, the best trial's id);
- each trial as a child run (``mlflow.parentRunId``): its config flattened as params, the metrics of
  ``METRIC_NAMES`` per epoch (``step`` = epoch), ``best_<metric>`` so far, the tag ``tuner.status``,
  lineage tags (git commit, package versions, dataset fingerprint), the URI of its best checkpoint
  (``tuner.best_checkpoint``; ``tuner promote`` logs that one as a model), and the files its latest
  checkpoint carries in ``artifacts/`` (resolved config, per-class accuracy, confusion matrix, error
  gallery: see ``trainables.artifacts``) as run artifacts.

Every write goes through ``tuner.tracking.buffer.TrackingWriter``: written ahead to the search's state
folder, so a tracking server that goes away costs nothing but delay. Run ids live in the same folder,
so ``tuner resume`` (a fresh callback, same folder) continues the same runs, and an epoch reported
again after a restore is not logged twice.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

from trainables.status import COMPLETED, EARLY_STOPPED, FAILED, RUNNING, SELF_ENDED

from tuner.redact import expand_env
from tuner.tracking.buffer import TrackingWriter
from tuner.tracking.operations import SEARCH_TARGET, metric_row
from tuner.tracking.sender import Sender
from tuner.tracking.store import fail_fast_http
from tuner.tracking.lineage import checkpoint_uri, dataset_fingerprint, stage_artifacts
from tuner.tracking.ui import VIEW_TAG, leaderboard_view
from tuner.tracking.tags import (
    BEST_TRIAL_TAG, CHECKPOINT_TAG, EXPERIMENT_KIND_TAG, KIND_TAG, METRIC_NAMES,
    SEARCH_TAG, SEARCHED_TAG, STATUS_TAG, TRIAL_STATUSES, TRIAL_TAG, UID_TAG,
)

log = logging.getLogger(__name__)

FINAL_STATUSES = TRIAL_STATUSES[1:]
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def trial_status(result: Optional[dict], *, errored: bool) -> str:
    """Maps how a trial ended to the tuner.status vocabulary.

    The trainable marks its own last report ``completed``/``converged``/``diverged``; a last report
    still saying ``running`` means something outside the trial (the scheduler) stopped it.
    """
    if errored:
        return FAILED
    status = (result or {}).get("status")
    if status in SELF_ENDED:
        return status
    return EARLY_STOPPED


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def param_values(values: dict) -> dict[str, str]:
    return {k: str(v)[:MAX_PARAM_CHARS] for k, v in flatten(values).items()}


def run_name(config: dict) -> str:
    """A leaderboard-readable name: ``resnet18 w0.5 lr=0.031 bs=64 sgd``."""
    parts = [str(config.get("arch", "?"))]
    if config.get("width", 1.0) != 1.0:
        parts.append(f"w{config['width']:g}")
    if config.get("growth_rate"):
        parts.append(f"k{config['growth_rate']}")
    lr = config.get("lr")
    parts.append(f"lr={lr:.3g}" if isinstance(lr, (int, float)) else f"lr={lr}")
    parts.append(f"bs={config.get('batch_size', '?')}")
    parts.append(str(config.get("optimizer", "")))
    return " ".join(p for p in parts if p)


def result_step(result: dict) -> int:
    return int(result.get("epoch", result.get("training_iteration", 0)))


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
        background_sends: bool = True,
    ) -> None:
        expand_env(tracking_uri, what="tracking URI")  # an unset ${VAR} fails here, before Ray starts
        self.tracking_uri = tracking_uri  # as given: pickled with the experiment, so never expanded
        self.search_name = search_name
        self.state_dir = Path(state_dir)
        self.artifact_root = artifact_root
        self.search_params = search_params
        self.search_tags = search_tags
        self.spec_file = spec_file
        self.metric, self.mode = metric, mode
        # False: every write is sent in Ray's loop, as it is recorded (a benchmark's baseline).
        self.background_sends = background_sends
        self._writer: Optional[TrackingWriter] = None
        self._fingerprints: dict[tuple, dict] = {}

    # Ray pickles callbacks with the experiment: keep the client, queue and caches out of it.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_writer": None, "_fingerprints": {}}

    @property
    def writer(self) -> TrackingWriter:
        if self._writer is None:
            if self.tracking_uri.startswith(("http://", "https://")):
                fail_fast_http()
            self._writer = TrackingWriter(tracking_uri=self.tracking_uri, state_dir=self.state_dir,
                                          search_name=self.search_name)
        return self._writer

    @property
    def state(self) -> dict:
        return self.writer.state

    # --- the search (parent run) ---
    def setup(self, **info) -> None:
        writer = self.writer
        writer.flush(force=True)  # what an earlier driver left unsent goes first, in order
        # (getattr: a search started by an older version is restored without the attribute)
        if getattr(self, "background_sends", True) and writer.sender is None:  # the loop only records
            Sender.start(writer)
        with writer.lock:  # the sender thread writes run ids into the same state
            self._record_search()

    def _record_search(self) -> None:
        writer = self.writer
        if "search_uid" not in self.state:
            self.state["search_uid"] = uuid.uuid4().hex
            writer.save_state()
        self._record_experiment()
        if self.state.get("parent_recorded"):
            writer.record({"op": "log", "target": SEARCH_TARGET, "tags": {STATUS_TAG: RUNNING}})
            writer.record({"op": "status", "target": SEARCH_TARGET, "status": "RUNNING"})
            return
        self.state["parent_recorded"] = True
        writer.save_state()
        writer.record({
            "op": "create_run", "target": SEARCH_TARGET, "run_name": f"search {self.search_name}",
            "tags": {KIND_TAG: "search", SEARCH_TAG: self.search_name, STATUS_TAG: RUNNING,
                     UID_TAG: self.state["search_uid"], **self.search_tags},
            "params": param_values(self.search_params),
        })
        if self.spec_file is not None and Path(self.spec_file).is_file():
            staged = writer.staging_dir("search-spec")
            staged.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.spec_file, staged / Path(self.spec_file).name)
            writer.record({"op": "artifacts", "target": SEARCH_TARGET, "dir": str(staged),
                           "files": [Path(self.spec_file).name]})

    def _record_experiment(self) -> None:
        location = (Path(self.artifact_root) / self.search_name).resolve().as_uri() \
            if self.artifact_root else None
        searched = sorted(self.search_params.get("space", {}))
        self.writer.record({
            "op": "experiment", "name": self.search_name, "artifact_location": location,
            "tags": {EXPERIMENT_KIND_TAG: "custom_model_development",
                     VIEW_TAG: leaderboard_view(self.metric, self.mode, searched)},
        })

    # --- trials (child runs) ---
    def _ensure_child(self, trial) -> dict:
        entry = self.state["trials"].get(trial.trial_id)
        if entry is not None and entry.get("recorded"):
            return entry
        entry = self.state["trials"].setdefault(trial.trial_id, {})
        entry.update(recorded=True, best=entry.get("best"), last_step=entry.get("last_step", 0),
                     status=RUNNING)
        self.writer.save_trial(trial.trial_id)
        config = dict(trial.config)
        searched = sorted(k for k in self.search_params.get("space", {}) if k in config)
        tags = {
            KIND_TAG: "trial", SEARCH_TAG: self.search_name, TRIAL_TAG: trial.trial_id,
            UID_TAG: self.state["search_uid"], STATUS_TAG: RUNNING, SEARCHED_TAG: ",".join(searched),
            **({"tuner.finetune": "head-only"} if config.get("finetune") == "head" else {}),
            **self._fingerprint(config), **self.search_tags,
        }
        self.writer.record({"op": "create_run", "target": trial.trial_id, "run_name": run_name(config),
                            "tags": tags, "params": param_values(config)})
        return entry

    def _fingerprint(self, config: dict) -> dict:
        key = (config.get("train_dir"), config.get("val_dir"))
        if key not in self._fingerprints:
            self._fingerprints[key] = dataset_fingerprint({"train": key[0], "val": key[1]})
        return self._fingerprints[key]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        with self.writer.lock:
            self._trial_started(trial)

    def _trial_started(self, trial) -> None:
        first_start = not (self.state["trials"].get(trial.trial_id) or {}).get("recorded")
        entry = self._ensure_child(trial)
        if first_start:  # just created RUNNING, with its RUNNING tag: two more writes would repeat it
            return
        if entry.get("status") != RUNNING:  # restarted after a failure or a restore
            entry["status"] = RUNNING
            self.writer.save_trial(trial.trial_id)
        self.writer.record({"op": "log", "target": trial.trial_id, "tags": {STATUS_TAG: RUNNING}})
        self.writer.record({"op": "status", "target": trial.trial_id, "status": "RUNNING"})

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        with self.writer.lock:
            self._trial_result(trial, result)

    def _trial_result(self, trial, result: dict) -> None:
        entry = self._ensure_child(trial)
        step = result_step(result)
        if step <= entry.get("last_step", 0):
            # Reported again after a restore from an earlier checkpoint: already in MLflow (epochs
            # are re-seeded from (seed, epoch), so the replayed epoch gives the same numbers).
            log.debug("trial %s: epoch %d already logged", trial.trial_id, step)
            return
        timestamp_ms = int(result.get("timestamp", time.time()) * 1000)
        metrics = [
            metric_row(name, result[name], timestamp_ms, step)
            for name in METRIC_NAMES
            if isinstance(result.get(name), (int, float)) and not isinstance(result.get(name), bool)
        ]
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            best = entry.get("best")
            if best is None or (value > best if self.mode == "max" else value < best):
                entry["best"] = float(value)
            metrics.append(metric_row(f"best_{self.metric}", entry["best"], timestamp_ms, step))
        entry["last_step"] = step
        self.writer.save_trial(trial.trial_id)
        if metrics:
            self.writer.record({"op": "log", "target": trial.trial_id, "metrics": metrics})

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish_trial(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish_trial(trial, errored=True)

    def _finish_trial(self, trial, *, errored: bool) -> None:
        with self.writer.lock:
            self._trial_finished(trial, errored=errored)

    def _trial_finished(self, trial, *, errored: bool) -> None:
        entry = self._ensure_child(trial)
        status = trial_status(trial.last_result, errored=errored)
        entry["status"] = status
        self.writer.save_trial(trial.trial_id)
        tags = {STATUS_TAG: status}
        best = _best_checkpoint_uri(trial)
        if best:
            tags[CHECKPOINT_TAG] = best
        self.writer.record({"op": "log", "target": trial.trial_id, "tags": tags})
        self._record_artifacts(trial)
        self.writer.record({"op": "status", "target": trial.trial_id,
                            "status": "FAILED" if status == FAILED else "FINISHED"})

    def _record_artifacts(self, trial) -> None:
        """The evaluation files of the trial's latest checkpoint (the final one when it ended
        itself), copied to the state folder first so the upload survives a server outage."""
        location = checkpoint_uri(trial.checkpoint)
        if not location:
            return
        staged = self.writer.staging_dir(f"trial-{trial.trial_id}")
        try:
            files = stage_artifacts(location, staged)
        except OSError as err:  # storage unreachable: the checkpoint URI tag still points at them
            log.warning("trial %s: could not read artifacts of %s: %s", trial.trial_id, location, err)
            return
        if files:
            self.writer.record({"op": "artifacts", "target": trial.trial_id, "dir": str(staged),
                                "files": files})

    def on_experiment_end(self, trials, **info) -> None:
        for trial in trials:  # trials Ray finished without telling us (none expected)
            entry = self.state["trials"].get(trial.trial_id)
            if entry and entry.get("status") == RUNNING and trial.status in ("TERMINATED", "ERROR"):
                self._finish_trial(trial, errored=trial.status == "ERROR")
        with self.writer.lock:
            if self.state.get("parent_recorded"):
                self.writer.record({"op": "log", "target": SEARCH_TARGET, **self._summary()})
                self.writer.record({"op": "status", "target": SEARCH_TARGET, "status": "FINISHED"})
        self.writer.close()  # not under the lock: it waits for the sender, which may need it

    def _summary(self) -> dict:
        """Counts over every trial of the search (a --more extension included) and the best one."""
        entries = self.state["trials"]
        counts = {status: 0 for status in FINAL_STATUSES}
        for entry in entries.values():
            if entry.get("status") in counts:
                counts[entry["status"]] += 1
        now = int(time.time() * 1000)
        metrics = [metric_row(f"trials_{status}", n, now, 0) for status, n in counts.items()]
        tags = {STATUS_TAG: COMPLETED}
        scored = {tid: e["best"] for tid, e in entries.items() if e.get("best") is not None}
        if scored:
            pick = max if self.mode == "max" else min
            # Ties go to the trial started first (max/min keep the first of equals; entries are in
            # start order), as the leaderboard ranks them.
            best_trial = pick(scored, key=scored.get)
            metrics.append(metric_row(f"best_{self.metric}", scored[best_trial], now, 0))
            tags[BEST_TRIAL_TAG] = best_trial
        return {"metrics": metrics, "tags": tags}


def _best_checkpoint_uri(trial) -> Optional[str]:
    """The checkpoint with the best score that Ray kept (falls back to the latest one)."""
    manager = getattr(trial.run_metadata, "checkpoint_manager", None)
    result = getattr(manager, "best_checkpoint_result", None) if manager else None
    checkpoint = result.checkpoint if result is not None else trial.checkpoint
    return checkpoint_uri(checkpoint)
