"""``tuner ui [NAME]``: the MLflow UI on 127.0.0.1, opened on a search's trials as a leaderboard.

MLflow 3 opens an experiment on a GenAI overview and lists runs by creation time with a few
attribute columns. Two of its own mechanisms land the user on the leaderboard instead:

- the experiment tag ``mlflow.experimentKind = custom_model_development`` (training, not GenAI);
- a *shared view*: the experiment tag ``mlflow.sharedViewState.<key>`` holds a JSON view (filter,
  order, visible columns) that the URL ``#/experiments/<id>/runs?viewStateShareKey=<key>`` applies,
  the same thing the UI's "Share" button writes. Plain URL parameters (``orderByKey``,
  ``orderByAsc``, ``searchFilter``) can order the table but cannot choose columns, and any of them
  in the URL makes the UI ignore a shared view, so the URL carries the share key and, beside it,
  ``workflowType=machine_learning``, which opens the "Model training" side of the UI instead of the
  GenAI one (a view setting the UI also remembers per browser; the shared view still applies).

The view shows what fits a laptop's 1400 px at once: run name, best metric, epochs run, status and
the searched params. MLflow prints metrics with all their digits (``val_loss`` 1.85298950…) and
offers no per-column format, so the per-epoch ``val_acc``/``val_loss`` stay one click away in the
run's page rather than taking columns. What MLflow does not let us change (its "Created" column is
always shown; its Assistant panel opens by itself on a browser's first visit to a local server and
stays closed once closed) is in docs/tracking.md.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from tuner.errors import UserError
from tuner.redact import redact
from tuner.tracking.store import open_client, tracking_errors
from tuner.tracking.leaderboard import find_search, searched_params
from tuner.tracking.tags import EXPERIMENT_KIND_TAG, KIND_TAG, STATUS_TAG

VIEW_KEY = "tuner-leaderboard"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
HOST = "127.0.0.1"  # never another interface: the UI has no authentication
START_TIMEOUT_S = 90  # a first start migrates the store's schema: ~10-30 s on 2 cores


def _column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"  # the UI's canonical column key, e.g. metrics.`val_acc`


def leaderboard_view(metric: str, mode: str, searched: Sequence[str]) -> str:
    """The shared view JSON: trials only, best first; the best metric, the epochs run, the status
    and the searched params shown, in that order."""
    columns = [_column("metrics", f"best_{metric}"), _column("metrics", "epoch"),
               _column("tags", STATUS_TAG)] + [_column("params", p) for p in searched]
    return json.dumps({
        "searchFilter": f"tags.`{KIND_TAG}` = 'trial'",
        "orderByKey": _column("metrics", f"best_{metric}"),
        "orderByAsc": mode == "min",
        "selectedColumns": columns,
        "columnOrder": columns,
    })


def experiment_path(experiment_id: Optional[str]) -> str:
    if experiment_id is None:
        return "#/experiments"
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"


def install_view(client, search: str) -> str:
    """(Re)writes the leaderboard view on the search's experiment; returns the experiment id."""
    experiment, parent = find_search(client, search)
    view = leaderboard_view(parent.data.params.get("metric", "val_acc"),
                            parent.data.params.get("mode", "max"), searched_params(parent))
    client.set_experiment_tag(experiment.experiment_id, VIEW_TAG, view)
    client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development")
    return experiment.experiment_id


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def server_command(tracking_uri: str, port: int) -> list[str]:
    # The store URI travels in MLFLOW_BACKEND_STORE_URI (server_env), not on the visible command line.
    command = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port),
               "--workers", "1"]
    if tracking_uri.startswith("sqlite:"):
        # Runs carry absolute artifact locations; new experiments made from the UI go here.
        command += ["--default-artifact-root", (Path.cwd() / "mlruns").resolve().as_uri(),
                    "--no-serve-artifacts"]
    return command


def server_env(store_uri: str) -> dict[str, str]:
    # MLflow 3's server also starts a job runner with ~8 worker processes for GenAI jobs (judges,
    # scorers) that a training leaderboard never uses: on a 2-core laptop they cost seconds.
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_BACKEND_STORE_URI": store_uri}


def wait_until_up(process: subprocess.Popen, port: int, store: str,
                  timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"the MLflow UI exited at start (status {process.returncode}); "
                            f"is port {port} taken, or the store {store} unreadable?")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise UserError(f"the MLflow UI did not answer on {HOST}:{port} within {timeout_s:.0f} s")


def serve(*, tracking_uri: str, search: Optional[str], port: int) -> int:
    """Prints the URL of the search's leaderboard; starts the UI unless a tracking server (http)
    already serves it. Runs until Ctrl-C (or SIGTERM), then stops the UI."""
    client = open_client(tracking_uri)
    with tracking_errors(tracking_uri):
        experiment_id = install_view(client, search) if search else None
    path = experiment_path(experiment_id)
    if tracking_uri.startswith(("http://", "https://")):
        print(f"{tracking_uri.rstrip('/')}/{path}", flush=True)
        return 0
    if not port_is_free(port):
        raise UserError(f"--port: {HOST}:{port} is already in use; pass another --port")
    process = subprocess.Popen(server_command(tracking_uri, port), env=server_env(client.tracking_uri),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        wait_until_up(process, port, redact(tracking_uri))
        print(f"MLflow UI: http://{HOST}:{port}/{path}", flush=True)
        print("(Ctrl-C stops it)", flush=True)
        process.wait()
        return 0 if process.returncode in (0, -signal.SIGTERM) else 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(process)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
