"""Every MLflow write of a search: written ahead to a file, sent in each run's order, never silently lost.

The tracking callback turns each event into an *operation* (create a run, log a batch, set a status,
upload a folder) and hands it to ``TrackingWriter.record``. The operation is appended to
``mlflow_pending.jsonl`` in the search's state folder, then sent: at once, or by the driver's
sender thread (``tuner.tracking.sender``), which sends each run's queued log operations as one
``log_batch`` when it has fallen behind (a run's writes keep their order). When MLflow cannot be
reached (a tracking server restarting, a network cut), the operation stays in the file, the search goes on, and
the queue is replayed in order on the next call that succeeds (at most every ``RETRY_AFTER_S``), at
the end of the search, and by ``tuner resume``. Whatever is still unsent at the end is listed, one
line each, in a warning, and stays in the file. Operations MLflow refuses outright (a deleted run, an
invalid value) are set aside in ``mlflow_rejected.jsonl`` with a warning: they would never succeed.

Replays are idempotent: a run is created only when none with the same (search uid, kind, trial) tags
exists (looked up only for an operation an earlier attempt may have sent: one read from the file or
tried before; a fresh one cannot have created anything); MLflow drops a metric identical in (key, value, step, timestamp); params and tags are
re-set to the same values; artifacts overwrite themselves. Operations name their run by *target*
("search" or a Ray trial id), resolved to a run id when sent, so a run created late is still right.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from tuner.redact import expand_env
from tuner.tracking.batching import coalesced, merge_logs
from tuner.tracking.operations import SEARCH_TARGET, describe
from tuner.tracking.run_state import STATE_FILE, TRIALS_JOURNAL, load_run_state, write_atomically
from tuner.tracking.store import is_transient, short_error
from tuner.tracking.tags import KIND_TAG, PARENT_TAG, TRIAL_TAG, UID_TAG

log = logging.getLogger(__name__)

COMPACT_AFTER = 2000  # journal lines before the snapshot is rewritten and the journal emptied
PENDING_FILE = "mlflow_pending.jsonl"
REJECTED_FILE = "mlflow_rejected.jsonl"
STAGED_DIR = "mlflow_staged"  # local copies of artifacts waiting to be uploaded
RETRY_AFTER_S = 5.0  # after a failed send, further sends wait this long (keeps the Ray loop fast)

# MLflow's log_batch limits per request.
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100


class Refused(Exception):
    """An operation that can never succeed (its run was never created, say)."""


class _Unreachable(Exception):
    """MLflow could not be reached: the rest of the queue waits for the next flush."""


class TrackingWriter:
    """Owns the run-id state, the pending queue and the MlflowClient of one search."""

    def __init__(self, *, tracking_uri: str, state_dir: Path, search_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.state_dir = Path(state_dir)
        self.search_name = search_name
        # Guards the state and the queue: a sender thread (``tuner.tracking.sender``) may send while
        # the Ray loop records. Whoever changes ``state`` holds it too (re-entrant).
        self.lock = threading.RLock()
        self._sending = threading.Lock()  # one flush at a time: the order of writes is kept
        self.state: dict = load_run_state(self.state_dir)
        self._journal_lines = 0  # lines appended since the last snapshot
        self._fold_journal()
        self.pending: list[dict] = self._load_pending()
        # Operations recorded by this process and never sent: no earlier attempt can have reached
        # MLflow, so creating their run needs no search for one (a query that grows with the runs).
        self._never_sent: set[int] = set()
        self.rejected: list[str] = []
        self._client = None
        self.sender = None  # a tuner.tracking.sender.Sender once started
        self._retry_at = 0.0
        self.last_error: Optional[str] = None

    # --- files ---
    @property
    def pending_path(self) -> Path:
        return self.state_dir / PENDING_FILE

    def _fold_journal(self) -> None:
        """An earlier driver's journal goes into a fresh snapshot: a line torn by a killed driver
        must not have this driver's first append glued onto it."""
        journal = self.state_dir / TRIALS_JOURNAL
        if journal.is_file() and journal.stat().st_size:
            self.save_state()

    def save_state(self) -> None:
        """Writes the whole state (a new generation) and empties the trial journal."""
        with self.lock:
            self.state["generation"] = int(self.state.get("generation", 0)) + 1
            write_atomically(self.state_dir / STATE_FILE, json.dumps(self.state, indent=1))
            # A crash before this line leaves lines of the previous generation: load_run_state skips them.
            write_atomically(self.state_dir / TRIALS_JOURNAL, "")
            self._journal_lines = 0

    def save_trial(self, trial_id: str) -> None:
        """Persists one trial's entry by appending it to the journal (compacted now and then)."""
        with self.lock:
            if self._journal_lines >= COMPACT_AFTER or "generation" not in self.state:
                self.save_state()
                return
            line = {"generation": self.state["generation"], "trial": trial_id,
                    "entry": self.state["trials"][trial_id]}
            with open(self.state_dir / TRIALS_JOURNAL, "a") as handle:
                handle.write(json.dumps(line) + "\n")
            self._journal_lines += 1

    def _load_pending(self) -> list[dict]:
        if not self.pending_path.is_file():
            return []
        ops = []
        for number, line in enumerate(self.pending_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                ops.append(json.loads(line))
            except json.JSONDecodeError:  # the driver died mid-line: that write never happened
                log.warning("%s:%d: unreadable pending MLflow write skipped", self.pending_path, number)
        return ops

    def _rewrite_pending(self) -> None:
        text = "".join(json.dumps(op) + "\n" for op in self.pending)
        write_atomically(self.pending_path, text)

    def staging_dir(self, name: str) -> Path:
        return self.state_dir / STAGED_DIR / name

    # --- the client ---
    @property
    def client(self):
        if self._client is None:
            # ${VAR} references in the URI are filled in here only: saved state never holds secrets.
            self._client = MlflowClient(expand_env(self.tracking_uri, what="tracking URI"))
        return self._client

    def run_id(self, target: str) -> Optional[str]:
        with self.lock:
            if target == SEARCH_TARGET:
                return self.state.get("parent_run_id")
            return self.state["trials"].get(target, {}).get("run_id")

    # --- queue ---
    def record(self, op: dict) -> None:
        """Writes ``op`` ahead to the pending file, then sends whatever the queue holds (or, with a
        sender thread running, wakes it and returns at once)."""
        with self.lock:
            self.pending.append(op)
            self._never_sent.add(id(op))
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with open(self.pending_path, "a") as handle:
                handle.write(json.dumps(op) + "\n")
            sender = self.sender
        if sender is not None:
            sender.wake()
        else:
            self.flush()

    @property
    def waiting(self) -> int:
        """Operations recorded and not sent yet."""
        with self.lock:
            return len(self.pending)

    @property
    def retry_at(self) -> float:
        """``time.monotonic()`` before which a flush without ``force`` sends nothing."""
        return self._retry_at

    def flush(self, *, force: bool = False) -> bool:
        """Sends pending operations in order; True when none is left.

        The queue's log operations of one run, up to the run's next operation of another kind, go
        as one ``log_batch``: a sender that fell behind catches up in fewer, larger writes."""
        with self._sending:
            with self.lock:
                if not self.pending:
                    return True
                if not force and time.monotonic() < self._retry_at:
                    return False
                ops = list(self.pending)
            done: set[int] = set()  # id() of each operation sent or set aside
            for group in coalesced(ops):
                try:
                    self._send(group)
                except _Unreachable:
                    break
                done.update(id(op) for op in group)
            with self.lock:
                if done:
                    if len(done) == len(ops) and self.last_error:
                        log.warning("MLflow at %s is back: %d buffered writes sent", self.tracking_uri,
                                    len(done))
                        self.last_error = None
                    self.pending = [op for op in self.pending if id(op) not in done]
                    self._rewrite_pending()
                return not self.pending

    def _send(self, group: list[dict]) -> None:
        """Sends one operation, or several log operations of one run merged; raises _Unreachable
        (after noting when to retry) if MLflow cannot be reached."""
        with self.lock:
            first_attempt = all(id(op) in self._never_sent for op in group)
            self._never_sent.difference_update(id(op) for op in group)  # an attempt may now reach MLflow
        try:
            self.apply(group[0] if len(group) == 1 else merge_logs(group), first_attempt=first_attempt)
        except Exception as err:  # classified below: retried later, or refused for good
            if not isinstance(err, Refused) and is_transient(err):
                if self.last_error is None:  # an outage begins: said once, its end is said too
                    log.warning("MLflow at %s cannot be reached (%s): the search goes on, its writes "
                                "are kept in %s and retried every %.0f s", self.tracking_uri,
                                short_error(err), self.pending_path, RETRY_AFTER_S)
                self.last_error = short_error(err)
                self._retry_at = time.monotonic() + RETRY_AFTER_S
                log.debug("MLflow unreachable (%s); %d writes pending", self.last_error, len(self.pending))
                raise _Unreachable from err
            if len(group) == 1:
                self._reject(group[0], err)
            else:  # refused as a whole: one by one, so that only the write at fault is set aside
                for op in group:
                    self._send([op])

    def _reject(self, op: dict, err: BaseException) -> None:
        line = f"{describe(op, self.search_name)} ({short_error(err)})"
        self.rejected.append(line)
        log.warning("MLflow refused a write of search %s, set aside in %s: %s",
                    self.search_name, self.state_dir / REJECTED_FILE, line)
        with open(self.state_dir / REJECTED_FILE, "a") as handle:
            handle.write(json.dumps({**op, "error": short_error(err)}) + "\n")

    def close(self) -> list[str]:
        """Stops the sender thread if one runs; last flush; warns with every write still unsent
        (kept for ``tuner resume``)."""
        if self.sender is not None:
            self.sender.stop()
        self.flush(force=True)
        unsent = [describe(op, self.search_name) for op in self.pending]
        if unsent:
            listing = "\n".join(f"  [{i}] {line}" for i, line in enumerate(unsent, 1))
            log.warning(
                "MLflow at %s could not be reached (%s): %d writes of search %s are NOT in MLflow "
                "yet; they are kept in %s and sent by `tuner resume %s`:\n%s",
                self.tracking_uri, self.last_error, len(unsent), self.search_name,
                self.pending_path, self.search_name, listing,
            )
        return unsent

    # --- one operation ---
    def apply(self, op: dict, *, first_attempt: bool = False) -> None:
        kind = op["op"]
        if kind == "experiment":
            self._apply_experiment(op)
        elif kind == "create_run":
            self._apply_create(op, first_attempt=first_attempt)
        else:
            run_id = self.run_id(op["target"])
            if run_id is None:
                raise Refused(f"its run was never created ({op['target']})")
            if kind == "log":
                self._apply_log(run_id, op)
            elif kind == "status":
                self.client.update_run(run_id, status=op["status"])
            elif kind == "artifacts":
                source = Path(op["dir"])
                staged = (self.state_dir / STAGED_DIR).resolve()
                # The queue is a file: whoever can write it must not make a replay upload (and then
                # delete) a folder outside the staging area the callback writes to.
                if not source.resolve().is_relative_to(staged) or source.resolve() == staged:
                    raise Refused(f"artifacts folder {source} is outside {staged}")
                if source.is_dir():  # gone: uploaded before a crash removed it from the queue
                    self.client.log_artifacts(run_id, str(source), op.get("path"))
                    shutil.rmtree(source, ignore_errors=True)
            else:
                raise Refused(f"unknown operation {kind!r}")

    def _apply_experiment(self, op: dict) -> None:
        client = self.client
        experiment = client.get_experiment_by_name(op["name"])
        if experiment is None:
            experiment_id = client.create_experiment(op["name"], artifact_location=op.get("artifact_location"))
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                log.warning("experiment %r was deleted in MLflow: restoring it", op["name"])
                client.restore_experiment(experiment_id)
        for key, value in op.get("tags", {}).items():
            client.set_experiment_tag(experiment_id, key, value)
        with self.lock:
            self.state["experiment_id"] = experiment_id
            self.save_state()

    def _apply_create(self, op: dict, *, first_attempt: bool = False) -> None:
        target = op["target"]
        run_id = self.run_id(target)
        if run_id is None:
            experiment_id = self.state.get("experiment_id")
            if experiment_id is None:
                raise Refused("the search's experiment was never created")
            tags = dict(op["tags"])
            if target != SEARCH_TARGET:
                parent = self.run_id(SEARCH_TARGET)
                if parent is None:
                    raise Refused("the search's parent run was never created")
                tags[PARENT_TAG] = parent
            earlier = None if first_attempt else self._find_run(experiment_id, tags)
            run_id = earlier or self.client.create_run(
                experiment_id, run_name=op["run_name"], tags=tags).info.run_id
            with self.lock:
                if target == SEARCH_TARGET:
                    self.state["parent_run_id"] = run_id
                    self.save_state()
                else:
                    self.state["trials"].setdefault(target, {})["run_id"] = run_id
                    self.save_trial(target)
        self._apply_log(run_id, {"params": op.get("params", {})})

    def _find_run(self, experiment_id: str, tags: dict) -> Optional[str]:
        """The run an earlier, interrupted attempt created (its reply lost), if any."""
        conditions = [f"tags.`{UID_TAG}` = '{tags[UID_TAG]}'", f"tags.`{KIND_TAG}` = '{tags[KIND_TAG]}'"]
        if TRIAL_TAG in tags:
            conditions.append(f"tags.`{TRIAL_TAG}` = '{tags[TRIAL_TAG]}'")
        runs = self.client.search_runs([experiment_id], " and ".join(conditions), max_results=1)
        return runs[0].info.run_id if runs else None

    def _apply_log(self, run_id: str, op: dict) -> None:
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in op.get("metrics", [])]
        params = [Param(k, v) for k, v in op.get("params", {}).items()]
        tags = [RunTag(k, v) for k, v in op.get("tags", {}).items()]
        for start in range(0, max(len(metrics), len(params), len(tags), 1), MAX_PARAMS):
            chunk = (metrics[start : start + MAX_PARAMS], params[start : start + MAX_PARAMS],
                     tags[start : start + MAX_TAGS])
            if any(chunk):
                self.client.log_batch(run_id, metrics=chunk[0], params=chunk[1], tags=chunk[2])


def replay(*, tracking_uri: str, state_dir: Path, search_name: str) -> list[str]:
    """Sends a search's pending writes now (for a later flush without resuming); returns what is
    still unsent."""
    writer = TrackingWriter(tracking_uri=tracking_uri, state_dir=state_dir, search_name=search_name)
    return writer.close()
