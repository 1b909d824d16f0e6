"""The embedded Ray that `tuner search` starts listens on 127.0.0.1 only, and a Ray without token
authentication (RAY_AUTH_MODE other than token) is refused unless the user says --insecure."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.cluster.local_cluster import session_of, processes
from tuner.cli import main

ROOT = Path(__file__).resolve().parents[2]

# Starts the embedded cluster exactly as `tuner search` does (tuner.cluster.connect.start_ray with no
# address), runs one task on it, and prints the node's address and every socket its processes listen on.
PROBE = """
import json, os, sys
from tuner.cluster.connect import start_ray
import ray, psutil  # psutil: Ray's own copy (ray/thirdparty_files), on the path once ray is imported

start_ray(None)
node_ip = ray.util.get_node_ip_address()

@ray.remote(num_cpus=0)
def where():
    return ray.util.get_node_ip_address()

task_ip = ray.get(where.remote())
session = os.getsid(0)
listening = []
for conn in psutil.net_connections("inet"):
    try:
        if conn.status == psutil.CONN_LISTEN and conn.pid and os.getsid(conn.pid) == session:
            listening.append([conn.laddr.ip, conn.laddr.port, psutil.Process(conn.pid).name()])
    except (ProcessLookupError, psutil.NoSuchProcess):  # a worker that just exited
        pass
ray.shutdown()
print(json.dumps({"node_ip": node_ip, "task_ip": task_ip, "listening": listening}))
"""

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_the_embedded_ray_listens_on_loopback_only():
    temp = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))  # short: Ray's unix socket paths
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_TMPDIR=str(temp), HOME=str(temp), PYTHONPATH=str(ROOT))
    probe = subprocess.Popen([sys.executable, "-c", PROBE], env=env, cwd=temp, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = probe.communicate(timeout=150)
    finally:
        # Whatever of this probe's own session is left (a raylet that outlived ray.shutdown).
        for pid, _ in processes():
            if session_of(pid) == probe.pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(temp, ignore_errors=True)
    assert probe.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["node_ip"] == "127.0.0.1" and result["task_ip"] == "127.0.0.1", result
    names = {name for _, _, name in result["listening"]}
    assert "gcs_server" in names and "raylet" in names, result  # the probe did see Ray's servers
    exposed = [entry for entry in result["listening"] if entry[0] not in LOOPBACK]
    assert exposed == [], f"listening beyond loopback: {exposed}"


@pytest.fixture
def recorded(monkeypatch):
    """`tuner search` / `tuner resume` with the library calls recorded instead of run."""
    import tuner.search.command as command  # the CLI imports it inside its handlers

    calls = []
    monkeypatch.setattr(command, "start_search", lambda *a, **k: calls.append(("search", a, k)))
    monkeypatch.setattr(command, "resume", lambda *a, **k: calls.append(("resume", a, k)))
    return calls


COMMANDS = [["search", "search_spaces/demo.yaml"], ["resume", "demo-1"]]


@pytest.mark.parametrize("argv", COMMANDS, ids=["search", "resume"])
@pytest.mark.parametrize("mode", ["disabled", "DISABLED", "", "off"])
def test_ray_without_token_auth_is_refused(argv, mode, recorded, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"RAY_AUTH_MODE={mode}" in err and "--insecure" in err and "token" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert recorded == []  # refused before anything starts


@pytest.mark.parametrize("argv", COMMANDS, ids=["search", "resume"])
def test_insecure_lets_it_through(argv, recorded, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert main([*argv, "--insecure"]) == 0
    assert [name for name, _, _ in recorded] == [argv[0]]


@pytest.mark.parametrize("argv", COMMANDS, ids=["search", "resume"])
@pytest.mark.parametrize("mode", [None, "token", "TOKEN"])
def test_token_auth_or_ray_default_needs_no_flag(argv, mode, recorded, monkeypatch):
    if mode is None:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Ray 2.60's default: token auth on
    else:
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
    assert main(argv) == 0
    assert [name for name, _, _ in recorded] == [argv[0]]
