"""A real search on a real multi-node Ray cluster (head + 2 worker nodes, token auth on), through
the CLI's ``--address``: GPU shares, a worker node killed mid-trial, the driver killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import NODES
from tests.cluster.harness import (
    log_tail, metric_steps, mlflow_runs, run_tuner, start_tuner, trial_rows, wait_for, write_spec,
)
from tuner.errors import UserError
from tuner.search.seal import verify_search_state

pytestmark = pytest.mark.slow

EPOCHS = 4  # per trial in the failure test: 1 before the node dies, 1 before the driver does


def search_args(ray_cluster, work, spec, name, *, with_address: bool = True):
    address = ("--address", ray_cluster.address) if with_address else ()
    return ("search", str(spec), "--name", name, *address,
            "--storage", str(work / "runs"), "--tracking-uri", tracking(work))


def tracking(work) -> str:
    return f"sqlite:///{work / 'mlflow.db'}"


def assert_each_trial_logged_once(work, name, *, trials: int, epochs: int) -> None:
    parents, children = mlflow_runs(tracking(work), name)
    assert len(parents) == 1, [p.info.run_name for p in parents]
    assert len(children) == trials, [c.info.run_name for c in children]
    assert len({c.data.tags["tuner.trial_id"] for c in children}) == trials
    for child in children:
        # Every epoch once: a resumed trial continues its run, it neither restarts nor repeats it.
        assert metric_steps(tracking(work), child.info.run_id) == list(range(1, epochs + 1))
        assert child.data.tags["tuner.status"] == "completed"


def snapshot_has_result(experiment: Path, trial_id: str, pid: int) -> bool:
    """Whether Tune's newest experiment snapshot (experiment_state-*.json) records a result of
    ``trial_id`` reported by process ``pid``, and the snapshot is whole: its upload has ended, so
    every state file matches the seal (what `tuner resume` checks). A driver killed in the middle of
    that upload leaves files cut short, which no resume can read: a different failure from the one
    tested here."""
    states = sorted(experiment.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"] if states else []
        verify_search_state(str(experiment), experiment.name)
    except (OSError, ValueError, UserError):  # being replaced right now: look again
        return False
    for _, runtime in trial_data:
        result = (json.loads(runtime) if isinstance(runtime, str) else runtime).get("last_result", {})
        if result.get("trial_id") == trial_id and result.get("pid") == pid:
            return True
    return False


def test_gpu_shares_bound_concurrency_and_each_trial_sees_its_own_device(
        ray_cluster, cluster_data, tmp_path):
    ray_cluster.ensure(NODES)
    gpu_node, cpu_node = ray_cluster.workers["gpu-node"], ray_cluster.workers["cpu-node"]
    # 1 GPU and half a CPU per trial: the gpu-node's 2 CPUs would hold 4 trials, its 2 GPUs hold 2;
    # the cpu-node has CPUs but no GPU. So of 3 trials at most 2 run at once, all on the gpu-node.
    spec = write_spec(tmp_path, cluster_data, "gpu-shares", epochs=1, num_samples=3, max_concurrent=3,
                      resources={"cpu": 0.5, "gpu": 1})
    # Started the way `ray job submit` starts a driver: no --address, $RAY_ADDRESS names the cluster
    # (a driver that ignored it would start its own Ray, without GPUs, and be refused).
    search = start_tuner(tmp_path, {**ray_cluster.driver_env(), "RAY_ADDRESS": ray_cluster.address},
                         "gpu-shares",
                         *search_args(ray_cluster, tmp_path, spec, "gpu-shares", with_address=False))
    on_gpu_node, on_cpu_node = [], []
    # Generous: on a fresh checkout the first trial processes load torch from a cold disk cache.
    deadline = time.monotonic() + 900
    while search.poll() is None and time.monotonic() < deadline:
        on_gpu_node.append(frozenset(gpu_node.trial_pids()))
        on_cpu_node.extend(cpu_node.trial_pids())
        time.sleep(0.2)
    assert search.wait(timeout=30) == 0, log_tail(tmp_path, "gpu-shares")

    rows = trial_rows(tmp_path / "runs", "gpu-shares")
    assert len(rows) == 3 and all(len(r) == 1 for r in rows.values()), rows
    device_of = {r[0]["pid"]: r[0]["visible_devices"] for r in rows.values()}
    # Each trial process saw exactly one of the node's two devices, never all of them.
    assert set(device_of.values()) <= {"0", "1"}, device_of
    assert on_cpu_node == [], "a trial asking for a GPU ran on the node without one"
    assert max(len(s) for s in on_gpu_node) == 2, "the 2 GPUs should run 2 trials at once, no more"
    for running in on_gpu_node:
        devices = [device_of[pid] for pid in running if pid in device_of]
        assert len(devices) == len(set(devices)), f"two running trials shared a device: {devices}"
    assert_each_trial_logged_once(tmp_path, "gpu-shares", trials=3, epochs=1)


def test_a_dead_node_then_a_dead_driver_cost_at_most_the_epoch_in_flight(
        ray_cluster, cluster_data, tmp_path):
    """The worker node under a running trial is SIGKILLed after the trial's first epoch; once the
    trial trains again on the other node, the driver is SIGKILLed too; `tuner resume` finishes."""
    ray_cluster.ensure(NODES)
    name = "failures"
    spec = write_spec(tmp_path, cluster_data, name, epochs=EPOCHS, num_samples=2,
                      max_concurrent=2, resources={"cpu": 1, "gpu": 0})
    search = start_tuner(tmp_path, ray_cluster.driver_env(), name,
                         *search_args(ray_cluster, tmp_path, spec, name))

    def rows():
        return trial_rows(tmp_path / "runs", name)

    def a_trial_mid_way():
        for trial, history in rows().items():
            if history and history[-1]["epoch"] < EPOCHS and ray_cluster.node_of(history[-1]["pid"]):
                return trial, history[-1]["pid"]
        return None

    # 1. A worker node dies under a trial that has checkpointed.
    trial, pid = wait_for(a_trial_mid_way, timeout_s=240, process=search,
                          what="a trial's first checkpointed epoch")
    victim = ray_cluster.node_of(pid)
    survivor = next(n for n in ray_cluster.workers.values() if n is not victim and n.alive())
    ray_cluster.kill_node(victim)
    new_pid = wait_for(lambda: next(iter({r["pid"] for r in rows()[trial]} - {pid}), None),
                       timeout_s=180, process=search, what="the trial to resume")
    assert ray_cluster.node_of(new_pid) is survivor  # read while the resumed trial still trains
    history = rows()[trial]
    resumed = [r for r in history if r["pid"] == new_pid]
    assert resumed[0]["iterations_since_restore"] == 1  # a new process, restored from a checkpoint
    # It went on after the last epoch the dead process reported (and checkpointed): only the epoch
    # in flight was lost. (Read now: an epoch reported just before the kill may land in the
    # results file after the kill.)
    before = [r["epoch"] for r in history if r["pid"] == pid]
    assert resumed[0]["epoch"] == max(before) + 1, (before, history)

    # 2. The driver dies, once the experiment snapshot in the storage (what `tuner resume` restores)
    # holds the resumed trial's report from its new process: nothing to guess with a sleep.
    wait_for(lambda: snapshot_has_result(tmp_path / "runs" / name, history[-1]["trial_id"], new_pid),
             timeout_s=120, process=search, what="the experiment snapshot to hold the resumed trial")
    os.kill(search.pid, signal.SIGKILL)
    search.wait(timeout=30)
    # Ray ends the dead driver's trial processes: wait for them to go before resuming.
    wait_for(lambda: not any(n.trial_pids() for n in ray_cluster.workers.values() if n.alive()),
             timeout_s=60, what="the dead driver's trials to end")
    finished = run_tuner(tmp_path, ray_cluster.driver_env(), "resume", name, "--storage",
                         str(tmp_path / "runs"), "--address", ray_cluster.address, timeout=300)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "2 trials (0 failed)" in finished.stdout  # the exact trial count

    final = rows()
    assert len(final) == 2
    for history in final.values():
        epochs = [r["epoch"] for r in history]
        assert epochs[-1] == EPOCHS and set(epochs) == set(range(1, EPOCHS + 1)), epochs
        assert len(epochs) - len(set(epochs)) <= 1, f"more than one epoch redone: {epochs}"
    assert [r["epoch"] for r in final[trial]].count(1) == 1  # never restarted from scratch
    parents, children = mlflow_runs(tracking(tmp_path), name)
    assert len(parents) == 1 and len(children) == 2  # each trial once, across both failures
    assert len({c.data.tags["tuner.trial_id"] for c in children}) == 2
    for child in children:
        # Ray may run the epoch in flight twice (above); MLflow holds each epoch exactly once.
        steps = metric_steps(tracking(tmp_path), child.info.run_id)
        assert steps == list(range(1, EPOCHS + 1)), steps
        assert child.data.tags["tuner.status"] == "completed"
