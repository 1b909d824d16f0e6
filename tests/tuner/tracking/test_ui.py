"""`tuner ui`: the MLflow UI on 127.0.0.1, landing on a search's trials ranked by val_acc. A real
headless Chromium renders it and the test reads the DOM (and keeps a screenshot in the tmp dir)."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import skip_or_fail
from tests.tuner.tracking.conftest import assert_user_error, free_port, run_cli, wait_for
from tuner.tracking.ui import VIEW_KEY, VIEW_TAG

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")


def chromium(url: str, profile: Path, *mode: str) -> subprocess.CompletedProcess:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
               "--window-size=1600,640", *mode, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def page_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", dom))


def test_ui_prints_the_leaderboard_url_of_a_tracking_server(team_search, team_client):
    uri = team_search.server.uri
    proc = run_cli("ui", "team", "--tracking-uri", uri)
    assert proc.returncode == 0, proc.stderr
    experiment = team_client.get_experiment_by_name("team")
    assert proc.stdout.strip() == f"{uri}/#/experiments/{experiment.experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
    view = json.loads(experiment.tags[VIEW_TAG])
    assert view["orderByKey"] == "metrics.`best_val_acc`" and view["orderByAsc"] is False
    assert {"metrics.`val_acc`", "params.`lr`", "tags.`tuner.status`"} <= set(view["selectedColumns"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert_user_error(run_cli("ui", "nope", "--tracking-uri", uri), "no search named 'nope'")


def test_browser_shows_the_trials_and_their_val_acc(resumed_store, tmp_path):
    """`tuner ui` starts the UI on the embedded (SQLite) store; Chromium shows every trial."""
    if not CHROMIUM.is_file():
        skip_or_fail("headless Chromium (/usr/bin/chromium, Debian package `chromium`) is missing")
    root, uri, _, _ = resumed_store
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        ui = subprocess.Popen([sys.executable, "-m", "tuner.cli", "ui", "team", "--port", str(port),
                               "--tracking-uri", uri], cwd=root, stdout=out, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = wait_for(lambda: re.search(r"MLflow UI: (\S+)", log.read_text()), timeout=180,
                       what="the UI's URL", alive=ui, log=log).group(1)
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/") and VIEW_KEY in url
        dom = chromium(url, tmp_path / "profile-dom", "--dump-dom").stdout
        shot = chromium(url, tmp_path / "profile-shot", f"--screenshot={tmp_path / 'leaderboard.png'}")
    finally:
        ui.send_signal(signal.SIGTERM)  # tuner ui stops its MLflow server on the way out
        ui.wait(timeout=60)
    assert ui.returncode == 0, log.read_text()[-2000:]
    text = page_text(dom)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("team")
    children = client.search_runs([experiment.experiment_id], "tags.`tuner.kind` = 'trial'")
    assert children and "best_val_acc" in text and "val_acc" in text
    for child in children:
        assert child.info.run_name in text, child.info.run_name
        assert repr(child.data.metrics["val_acc"]) in text, (child.info.run_name, child.data.metrics["val_acc"])
    assert "search team" not in text  # the view lists trials only, not the parent run
    assert shot.returncode == 0 and (tmp_path / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"


def test_ui_refuses_a_busy_port_and_a_missing_store(resumed_store, tmp_path):
    _, uri, _, _ = resumed_store
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_user_error(run_cli("ui", "team", "--port", str(port), "--tracking-uri", uri),
                          f"--port: 127.0.0.1:{port} is already in use")
    assert_user_error(run_cli("ui", "team", cwd=tmp_path), "no MLflow store at")
