"""One real search shared by the tracking tests, in team mode, through a tracking-server outage.

A real ``mlflow server`` backed by a fresh PostgreSQL database (dropped afterwards) and a local
artifact root; the real CLI (``python -m tuner.cli search … --tracking-uri http://…``) runs a tiny
search against it; once a trial has logged an epoch the server is STOPPED, and started again once the
search has buffered writes, while the search provably still runs (its driver is paused with
SIGSTOP around each server stop and start, so no trial result slips through unseen, and its trials
are held from the first failed write until the replay, so the search cannot end before it). The
buffer is replayed mid-search; then the server is stopped again and the search ends with writes unsent, which
`tuner flush` sends once the server is back. The search runs inside a throw-away git repository, so
its lineage tag names a known commit. The tests then read the run tree, the leaderboard, promote, predict and
the UI from that one search. Budget on 2 cores: the server start and the search ~60 s, everything
else ~40 s (the CLI runs in-process, `tuner.cli.main`, except the search and `tuner ui`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import yaml

from tests.conftest import fresh_postgres_database
from tuner.tracking.run_state import load_run_state

SEARCH = "team"
SPEC = {
    "name": SEARCH,
    "metric": "val_acc",
    "mode": "max",
    # 600 images: epochs long enough that the MLflow outages below begin and end while trials run.
    "fixed": {"epochs": 2, "train_subset": 600, "arch": "resnet18", "width": 0.125,
              "batch_size": 64, "num_workers": 0},
    "space": {"lr": {"loguniform": [0.005, 0.2]}, "optimizer": {"choice": ["sgd", "adam"]}},
    # A known-good start, then a rate too small to learn in 2 epochs (ASHA's candidate to stop).
    "points_to_evaluate": [{"lr": 0.05, "optimizer": "sgd"}, {"lr": 0.0050001, "optimizer": "sgd"}],
    "sampler": {"name": "tpe", "seed": 0},
    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
    "budget": {"num_samples": 4, "max_concurrent": 2},
    "resources": {"cpu": 1, "gpu": 0},
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], object], *, timeout: float, what: str,
             alive: Optional[subprocess.Popen] = None, log: Optional[Path] = None,
             interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.is_file() else ""
            raise AssertionError(f"process exited ({alive.returncode}) while waiting for {what}:\n{tail}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 that a test can stop and start again (same port)."""

    def __init__(self, store_uri: str, artifacts: Path, log: Path) -> None:
        self.store_uri, self.artifacts, self.log = store_uri, artifacts, log
        self.port = free_port()
        self.process: Optional[subprocess.Popen] = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def start(self, timeout: float = 180) -> "MlflowServer":
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.store_uri,
                   "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        wait_for(self.healthy, timeout=timeout, what=f"mlflow server on {self.uri}",
                 alive=self.process, log=self.log)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # its own session: uvicorn worker included
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        wait_for(lambda: not self.healthy(), timeout=20, what="the server to stop answering")


@pytest.fixture(scope="session")
def postgres_store():
    """A fresh PostgreSQL database for this test run, dropped afterwards."""
    with fresh_postgres_database() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def tracking_server(postgres_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(postgres_store, root / "artifacts", root / "server.log").start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class TeamSearch:
    work: Path
    name: str
    server: MlflowServer
    returncode: int
    output: str
    pending_during_outage: int  # writes the search had buffered when the server came back
    unsent_at_end: int  # writes still buffered when the search ended (second outage)
    results_at_replay: int  # trial results the driver had handled when its buffer was replayed
    results_total: int  # ... and when the search ended: more = the replay happened mid-search
    flush: Optional["CliResult"]  # `tuner flush team` once the server was back after the end
    commit: str  # HEAD of the throw-away git repository the search was started in

    @property
    def state_dir(self) -> Path:
        return self.work / "runs" / self.name / "tuner_state"

    @property
    def ray_dir(self) -> Path:
        return self.work / "runs" / self.name


def pending_writes(state_dir: Path) -> int:
    path = state_dir / "mlflow_pending.jsonl"
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def trial_epochs_logged(client, name: str) -> bool:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return False
    runs = client.search_runs([experiment.experiment_id], "tags.`tuner.kind` = 'trial'")
    return any("val_acc" in r.data.metrics for r in runs)


def results_handled(ray_dir: Path) -> int:
    """Trial results the driver has written to Ray's result.json files so far."""
    return sum(len(rows) for rows in ray_results(ray_dir).values()) if ray_dir.is_dir() else 0


def git_repository(folder: Path) -> str:
    """``folder`` as a git repository with one commit (the user's project); returns its HEAD."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t",
                               *args], check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "team.yaml")
    git("commit", "-q", "-m", "the search spec")
    return git("rev-parse", "HEAD")


@contextmanager
def paused(process: subprocess.Popen):
    """The search's driver stopped (SIGSTOP, the driver only: Ray and the trials keep their state,
    trials wait at their next report) for the duration of the block."""
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


def trial_processes(search: subprocess.Popen) -> list[int]:
    """The search's trial actors (Ray names them ``ray::ImplicitFunc...``): Ray's processes stay in
    the session the driver was started in (``start_new_session``), so its pid is their session id."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getsid(int(proc.name)) == search.pid and \
                    (proc / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                pids.append(int(proc.name))
        except (OSError, ProcessLookupError):  # exited meanwhile
            continue
    return pids


@contextmanager
def trials_held(search: subprocess.Popen):
    """The search's running trials stopped (SIGSTOP) for the duration of the block: the driver
    and its MLflow sender run on, but no trial reports, so the search cannot end meanwhile."""
    held = trial_processes(search)
    for pid in held:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        yield held
    finally:
        for pid in held:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="session")
def team_search(tracking_server, quick_data, tmp_path_factory) -> TeamSearch:
    from mlflow.tracking import MlflowClient

    work = tmp_path_factory.mktemp("team-search")
    spec = dict(SPEC, data={"train": str(quick_data / "train"), "val": str(quick_data / "val"),
                            "image_size": 32})
    (work / "team.yaml").write_text(yaml.safe_dump(spec))
    commit = git_repository(work)
    log = work / "search.log"
    with open(log, "w") as out:
        search = subprocess.Popen(
            [sys.executable, "-m", "tuner.cli", "search", "team.yaml", "--tracking-uri", tracking_server.uri],
            cwd=work, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    state_dir, ray_dir = work / "runs" / SEARCH / "tuner_state", work / "runs" / SEARCH
    try:
        client = MlflowClient(tracking_server.uri)
        wait_for(lambda: trial_epochs_logged(client, SEARCH), timeout=300,
                 what="a first epoch in MLflow", alive=search, log=log)
        with paused(search):  # outage 1 starts while trials are still running
            tracking_server.stop()
        # A send failed (the driver says so) and writes are queued: queued writes alone could be
        # the sender thread's backlog behind a request still in flight, which may succeed once the
        # server is back (no outage seen).
        pending = wait_for(lambda: "cannot be reached" in log.read_text() and pending_writes(state_dir),
                           timeout=300, what="writes buffered during the outage", alive=search, log=log,
                           interval=0.1)
        # From here until the replay, the trials are held: on a loaded machine the few short epochs
        # left could otherwise all be handled before the replay, which would then come at the end.
        with trials_held(search):
            with paused(search):  # no result is handled while the server restarts
                tracking_server.start()
            # The sender retries by itself RETRY_AFTER_S after its failed send: that is the replay.
            wait_for(lambda: pending_writes(state_dir) == 0 or search.poll() is not None,
                     timeout=300, what="the buffered writes to be sent", interval=0.05)
            at_replay = results_handled(ray_dir)
            if search.poll() is None:
                with paused(search):  # outage 2: lasts until the search has ended
                    at_replay = results_handled(ray_dir)
                    tracking_server.stop()
        search.wait(timeout=600)
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
            search.wait()
    output = log.read_text()
    assert search.returncode == 0, output[-4000:]
    unsent = pending_writes(state_dir)
    if not tracking_server.healthy():
        tracking_server.start()
    flush = run_cli("flush", SEARCH, cwd=work) if unsent else None
    if pending_writes(state_dir):  # whatever happened above, the other tests read a complete tree
        from tuner.tracking.buffer import replay

        replay(tracking_uri=tracking_server.uri, state_dir=state_dir, search_name=SEARCH)
    return TeamSearch(work, SEARCH, tracking_server, search.returncode, output, pending, unsent,
                      at_replay, results_handled(ray_dir), flush, commit)


@pytest.fixture(scope="session")
def team_client(team_search):
    from mlflow.tracking import MlflowClient

    return MlflowClient(team_search.server.uri, registry_uri=team_search.server.uri)


def ray_results(ray_dir: Path) -> dict[str, list[dict]]:
    """Every result Ray recorded for each trial of a search: {trial_id: [result, …]}."""
    results: dict[str, list[dict]] = {}
    for path in sorted(ray_dir.glob("*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            results.setdefault(rows[0]["trial_id"], []).extend(rows)
    return results


def real_trials(ray_dir: Path) -> list:
    """Ray's own Trial objects of a finished search, restored from its experiment state."""
    from ray.tune import ExperimentAnalysis

    return sorted(ExperimentAnalysis(str(ray_dir)).trials, key=lambda t: t.trial_id)


def make_tracking(tracking_uri: str, state_dir: Path, spec_file: Optional[Path] = None):
    from tuner.tracking.callback import MlflowTracking

    return MlflowTracking(
        tracking_uri=tracking_uri, search_name=SEARCH, state_dir=state_dir,
        artifact_root=state_dir.parent / "mlruns" if tracking_uri.startswith("sqlite:") else None,
        search_params={"metric": "val_acc", "mode": "max", "space": {"lr": "loguniform",
                       "optimizer": "choice"}},
        search_tags={}, spec_file=spec_file,
    )


def drive(callback, trials: list, results: dict[str, list[dict]], *, epochs_upto: Optional[int] = None,
          end: bool = True) -> None:
    """Feeds a callback the hooks Ray calls, in Ray's order, with real Trial objects and results.

    ``epochs_upto`` stops every trial after that epoch and ``end=False`` skips the trial and
    experiment ends: the driver "dies" there.
    """
    callback.setup(stop=None, num_samples=len(trials), total_num_samples=len(trials))
    for number, trial in enumerate(trials):
        callback.on_trial_start(iteration=number, trials=trials, trial=trial)
        for row in results[trial.trial_id]:
            if epochs_upto is None or row["epoch"] <= epochs_upto:
                callback.on_trial_result(iteration=number, trials=trials, trial=trial, result=dict(row))
        if end:
            hook = callback.on_trial_error if trial.status == "ERROR" else callback.on_trial_complete
            hook(iteration=number, trials=trials, trial=trial)
    if end:
        callback.on_experiment_end(trials=trials)
    else:  # the driver dies, once its sender thread has sent what it recorded
        callback.writer.sender.stop()
        callback.writer.flush()


@pytest.fixture(scope="session")
def resumed_store(team_search, tmp_path_factory):
    """The team search's real trials logged into a fresh SQLite store by a driver that dies after
    epoch 1 of every trial, then by a NEW callback on the same state folder (a `tuner resume`)."""
    root = tmp_path_factory.mktemp("resumed")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    state_dir = root / "tuner_state"
    trials, results = real_trials(team_search.ray_dir), ray_results(team_search.ray_dir)
    drive(make_tracking(uri, state_dir, team_search.work / "team.yaml"), trials, results,
          epochs_upto=1, end=False)
    first = load_run_state(state_dir)
    drive(make_tracking(uri, state_dir), trials, results)
    return root, uri, state_dir, first


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Optional[Path] = None) -> CliResult:
    """The real CLI (``tuner.cli.main``: parsing, error lines, exit status) run in this process:
    ~5 s of interpreter start and imports saved per call. Environment and cwd are restored."""
    from tuner.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit:  # argparse's own usage errors
                code = exit.code
    finally:
        os.chdir(saved_cwd)
        for key in set(os.environ) - set(saved_env):
            del os.environ[key]
        os.environ.update(saved_env)
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_user_error(result, text: str) -> None:
    """Bad input: exit status 2, exactly one error line naming the problem, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("tuner: error:")]
    assert len(lines) == 1 and text in lines[0], result.stderr
    assert "Traceback" not in result.stderr
