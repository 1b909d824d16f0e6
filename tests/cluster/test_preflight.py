"""Bad input for a search on a cluster: one clear line and exit status 2, before any trial starts.

The functions of tuner/cluster.py are checked directly (fast); then the real CLI on each bad input:
an unreachable address, a storage path that cannot be written, GPUs this machine lacks, GPU shares
above what any node of a real cluster has, and a node without the package.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.cluster.conftest import NODES
from tests.cluster.harness import no_ray_env, python_without_the_package, tuner_command, write_spec
from tuner.cluster import preflight as cluster
from tuner.cluster.connect import ray_address_from_env
from tuner.errors import UserError
from tuner.spec import ResourceSpec


GPUS_HERE = torch.cuda.device_count()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: connections are refused


# --- the checks, in-process ---
@pytest.mark.parametrize("address, expected", [
    ("10.0.0.5:6379", ("10.0.0.5", 6379)),
    ("head.internal", ("head.internal", 6379)),
    ("ray://head.internal", ("head.internal", 10001)),
    ("ray://10.0.0.5:10002", ("10.0.0.5", 10002)),
])
def test_addresses_parse_with_rays_default_ports(address, expected):
    assert cluster._host_port(address) == expected


@pytest.mark.parametrize("address", ["head:port", "ray://:10001"])
def test_malformed_address_is_refused(address):
    with pytest.raises(UserError, match="expected HOST:PORT"):
        cluster._host_port(address)


def test_unreachable_address_fails_in_seconds():
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(UserError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        cluster.check_address(f"127.0.0.1:{port}")
    assert time.monotonic() - started < cluster.CONNECT_TIMEOUT_S


def test_dashboard_address_points_to_job_submission():
    with pytest.raises(UserError, match="ray job submit"):
        cluster.check_address("http://127.0.0.1:8265")


def test_ray_client_address_needs_the_client_or_a_listener():
    # Without ray[client] installed the message says so; with it, nothing listens on that port.
    with pytest.raises(UserError, match=r"ray\[client\]|no Ray cluster answers"):
        cluster.check_address(f"ray://127.0.0.1:{closed_port()}")


@pytest.mark.parametrize("value, expected", [
    ("10.0.1.23:6379", "10.0.1.23:6379"),  # what `ray job submit` gives the driver it starts
    ("http://127.0.0.1:8265", None),  # the `ray job` CLI's server: not a cluster to join
    ("", None),
])
def test_ray_address_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("RAY_ADDRESS", value)
    assert ray_address_from_env() == expected


@pytest.mark.parametrize("address", [None, "local", "auto"])
def test_local_addresses_need_no_listener(address):
    cluster.check_address(address)


def test_storage_under_a_file_is_not_writable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"--storage .*a-file/runs: not a writable folder"):
        cluster.check_storage(str(blocker / "runs"))


def test_writable_storage_is_created_and_left_clean(tmp_path):
    cluster.check_storage(str(tmp_path / "new" / "runs"))
    assert (tmp_path / "new" / "runs").is_dir()
    assert list((tmp_path / "new" / "runs").iterdir()) == []  # the probe file is gone


def test_a_trial_must_fit_one_node_not_the_sum_of_nodes():
    nodes = [cluster.NodeShape("a", {"CPU": 2, "GPU": 2}, True),
             cluster.NodeShape("b", {"CPU": 2, "GPU": 1}, True)]
    request = cluster.trial_request(ResourceSpec(cpu=1, gpu=3))  # the cluster has 3 GPUs in all
    assert request == {"CPU": 1.0, "GPU": 3.0}
    with pytest.raises(UserError) as raised:
        cluster.check_resources_fit(request, nodes, source="big.yaml", address="h:6379")
    message = str(raised.value)
    assert message.startswith("big.yaml: resources: one trial asks for 1 CPU, 3 GPU")
    assert "a: 2 CPU, 2 GPU; b: 2 CPU, 1 GPU" in message and "\n" not in message
    # Shares that fit one node pass; zero-amount resources are not asked for.
    cluster.check_resources_fit(cluster.trial_request(ResourceSpec(cpu=2, gpu=0.25)), nodes,
                                source="ok.yaml", address="h:6379")
    assert cluster.trial_request(ResourceSpec(cpu=1, gpu=0)) == {"CPU": 1.0}


def test_a_node_type_the_autoscaler_can_start_counts():
    nodes = [cluster.NodeShape("head", {"CPU": 0}, True),
             cluster.NodeShape("node type gpu_worker", {"CPU": 8, "GPU": 1}, False)]
    cluster.check_resources_fit({"CPU": 2.0, "GPU": 1.0}, nodes, source="s.yaml", address="h:6379")


def test_the_node_probe_names_what_a_node_lacks(tmp_path):
    probe = cluster._node_probe()
    report = probe("trainables.trial", str(tmp_path), [str(tmp_path)])
    assert report["problems"] == [] and report["versions"]["torch"]
    report = probe("no_such_package.trial", str(tmp_path / "missing"), [str(tmp_path / "nodata")])
    problems = " | ".join(report["problems"])
    assert "cannot import no_such_package.trial (ModuleNotFoundError" in problems
    assert f"cannot write the storage path {tmp_path / 'missing'}" in problems
    assert f"data folder {tmp_path / 'nodata'} does not exist there" in problems


# --- the real CLI ---
def assert_one_clear_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tuner: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def bad_searches(tmp_path_factory, demo_data):
    """The CLI on three bad inputs at once (each pays Python's imports; in parallel they overlap)."""
    blocker = tmp_path_factory.mktemp("blocker") / "a-file"
    blocker.write_text("not a folder")
    cases = {
        "unreachable": ({"cpu": 1, "gpu": 0}, ["--address", f"127.0.0.1:{closed_port()}"]),
        "unwritable": ({"cpu": 1, "gpu": 0}, ["--storage", str(blocker / "runs")]),
        # The embedded cluster of a laptop without a GPU (one with GPUs: more than it has).
        "gpu-here": ({"cpu": 1, "gpu": GPUS_HERE + 1}, []),
    }
    running = {}
    for name, (resources, flags) in cases.items():
        work = tmp_path_factory.mktemp(name)
        spec = write_spec(work, demo_data, name, epochs=1, num_samples=1, max_concurrent=1,
                          resources=resources)
        command = tuner_command("search", str(spec), "--tracking-uri",
                                f"sqlite:///{work / 'mlflow.db'}", *flags)
        running[name] = (work, subprocess.Popen(command, cwd=work, env=no_ray_env(), text=True,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = {}
    for name, (work, process) in running.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (work, subprocess.CompletedProcess(process.args, process.returncode,
                                                           stdout, stderr))
    return results


def test_cli_unreachable_address(bad_searches):
    work, proc = bad_searches["unreachable"]
    assert_one_clear_line(proc, "--address 127.0.0.1:", "no Ray cluster answers")
    assert not (work / "runs" / "unreachable").exists()


def test_cli_storage_that_cannot_be_written(bad_searches):
    _, proc = bad_searches["unwritable"]
    assert_one_clear_line(proc, "--storage ", "a-file/runs: not a writable folder")


def test_cli_gpus_this_machine_does_not_have(bad_searches):
    work, proc = bad_searches["gpu-here"]
    assert_one_clear_line(proc, f"gpu-here.yaml: resources: one trial asks for 1 CPU, "
                          f"{GPUS_HERE + 1} GPU", "this machine")
    assert not (work / "runs" / "gpu-here").exists()  # refused before any trial, name still free


@pytest.mark.slow
def test_cli_gpu_share_above_every_node_of_a_cluster(ray_cluster, demo_data, tmp_path):
    ray_cluster.ensure(NODES)  # the cluster has 2 GPUs in all, on one node
    spec = write_spec(tmp_path, demo_data, "too-big", epochs=1, num_samples=1, max_concurrent=1,
                      resources={"cpu": 1, "gpu": 3})
    proc = subprocess.run(
        tuner_command("search", str(spec), "--address", ray_cluster.address,
                      "--storage", str(tmp_path / "runs"),
                      "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"),
        cwd=tmp_path, env=ray_cluster.driver_env(), capture_output=True, text=True, timeout=300)
    line = assert_one_clear_line(proc, "one trial asks for 1 CPU, 3 GPU",
                                 f"the cluster at {ray_cluster.address}")
    assert "2 CPU, 2 GPU" in line  # the biggest node is named
    assert not (tmp_path / "runs" / "too-big").exists()


@pytest.mark.slow
def test_cli_node_without_the_package(ray_cluster, demo_data, tmp_path):
    ray_cluster.ensure(NODES)
    python = python_without_the_package(ray_cluster.root)
    bare = ray_cluster.add_node("bare-node", num_cpus=2, python=python,
                                extra_env={"PYTHONPATH": ""})
    try:
        ray_cluster.wait_for_workers(len(NODES) + 1)
        spec = write_spec(tmp_path, demo_data, "bare", epochs=1, num_samples=1, max_concurrent=1,
                          resources={"cpu": 1, "gpu": 0})
        proc = subprocess.run(
            tuner_command("search", str(spec), "--address", ray_cluster.address,
                          "--storage", str(tmp_path / "runs"),
                          "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"),
            cwd=tmp_path, env=ray_cluster.driver_env(), capture_output=True, text=True,
            timeout=300)
    finally:
        ray_cluster.kill_node(bare)
        del ray_cluster.workers["bare-node"]
    assert_one_clear_line(proc, "cluster check:", "cannot import trainables.trial",
                          "ModuleNotFoundError", "docker/")
    assert not (tmp_path / "runs" / "bare").exists()
    assert not list(Path(python).parent.parent.joinpath("lib").glob("**/tuner*"))  # truly without
