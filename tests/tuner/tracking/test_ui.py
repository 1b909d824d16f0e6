"""`tuner ui`: the MLflow UI on 127.0.0.1, landing on a search's trials ranked by val_acc. A real
headless Chromium renders it and the test reads the DOM (and keeps a screenshot in the tmp dir)."""

from __future__ import annotations

import asyncio
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
from tests.tuner.tracking.browser import CHROMIUM, Page
from tests.tuner.tracking.conftest import assert_user_error, free_port, run_cli, wait_for
from tuner.tracking.ui import VIEW_KEY, VIEW_TAG

pytestmark = pytest.mark.slow

def test_ui_prints_the_leaderboard_url_of_a_tracking_server(team_search, team_client):
    uri = team_search.server.uri
    proc = run_cli("ui", "team", "--tracking-uri", uri)
    assert proc.returncode == 0, proc.stderr
    experiment = team_client.get_experiment_by_name("team")
    assert proc.stdout.strip() == (f"{uri}/#/experiments/{experiment.experiment_id}/runs"
                                   f"?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning")
    view = json.loads(experiment.tags[VIEW_TAG])
    assert view["orderByKey"] == "metrics.`best_val_acc`" and view["orderByAsc"] is False
    assert view["selectedColumns"][:3] == ["metrics.`best_val_acc`", "metrics.`epoch`", "tags.`tuner.status`"]
    assert "params.`lr`" in view["selectedColumns"]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert_user_error(run_cli("ui", "nope", "--tracking-uri", uri), "no search named 'nope'")


def test_browser_at_laptop_width_shows_every_trial_and_column_at_once(resumed_store, tmp_path):
    """`tuner ui` starts the UI on the embedded (SQLite) store; a 1400 px wide Chromium shows every
    trial with its best val_acc, epochs, status and searched params without scrolling, once MLflow's
    Assistant panel (opened by itself on a browser's first visit) is closed as a person would."""
    if not CHROMIUM.is_file():
        skip_or_fail("headless Chromium (/usr/bin/chromium, Debian package `chromium`) is missing")
    root, uri, _, _ = resumed_store
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("team")
    children = client.search_runs([experiment.experiment_id], "tags.`tuner.kind` = 'trial'")
    columns = ["Run Name", "best_val_acc", "epoch", "tuner.status",
               *children[0].data.tags["tuner.searched_params"].split(",")]
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
        seen = asyncio.run(_look_at(url, columns, tmp_path))
    finally:
        ui.send_signal(signal.SIGTERM)  # tuner ui stops its MLflow server on the way out
        ui.wait(timeout=60)
    assert ui.returncode == 0, log.read_text()[-2000:]
    assert seen["assistant_closed"] and seen["model_training"], seen
    for column in columns:
        assert seen["columns"][column] is not None, (column, seen["columns"])
    for child in children:
        best = child.data.metrics["best_val_acc"]
        assert child.info.run_name in seen["text"], child.info.run_name
        assert f"{best:.3f}".rstrip("0") in seen["text"] or repr(best) in seen["text"], best
    assert "search team" not in seen["text"]  # the view lists trials only, not the parent run
    shot = (tmp_path / "leaderboard.png").read_bytes()
    assert shot[:4] == b"\x89PNG" and len(shot) > 20_000  # a drawn page, not a blank one


async def _look_at(url: str, labels: list[str], tmp_path: Path) -> dict:
    async with Page(tmp_path / "profile", width=1400, height=800) as page:
        await page.goto(url)
        await page.wait_for_text("tuner.status")
        closed = await page.click('[data-component-id="mlflow.assistant.chat_panel.close"]')
        await asyncio.sleep(1)  # the table widens into the panel's room
        columns = {label: await page.seen_at(label) for label in labels}
        mode = await page.evaluate("location.href")
        text = await page.evaluate("document.body.innerText")
        await page.screenshot(tmp_path / "leaderboard.png")
    return {"assistant_closed": closed, "model_training": "workflowType=machine_learning" in mode,
            "columns": columns, "text": text}


def test_ui_refuses_a_busy_port_and_a_missing_store(resumed_store, tmp_path):
    _, uri, _, _ = resumed_store
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_user_error(run_cli("ui", "team", "--port", str(port), "--tracking-uri", uri),
                          f"--port: 127.0.0.1:{port} is already in use")
    assert_user_error(run_cli("ui", "team", cwd=tmp_path), "no MLflow store at")
