"""A real multi-node Ray cluster on this machine: a head and worker nodes, each its own
``ray start --block`` process session, joined over TCP with token auth on, as on a cloud cluster.

Each node runs in its own session (``start_new_session``), so killing a node means SIGKILL to every
process of that session: its raylet, its agents and the trial processes it hosts, the way a node
vanishes when its machine dies. Nothing here calls ``ray stop``, which would stop every Ray on the
machine (other engineers' tests included).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

RAY_MODULE = [sys.executable, "-m", "ray.scripts.scripts"]
TRIAL_PROCESS = "ray::ImplicitFunc"  # the process title of a function trainable's actor


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_of(pid: int) -> Optional[int]:
    """The session id of a process (field 6 of /proc/PID/stat), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])


def processes() -> list[tuple[int, str]]:
    """(pid, command line) of every process on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
            found.append((int(entry.name), cmdline))
    return found


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    temp_dir: Path
    num_cpus: float
    num_gpus: float
    log: Path
    python: Optional[str] = None  # another interpreter for the node (a node without the package)

    @property
    def session(self) -> int:
        return self.process.pid  # `ray start` leads its own session

    def pids(self) -> list[int]:
        return [pid for pid, _ in processes() if session_of(pid) == self.session]

    def trial_pids(self) -> list[int]:
        return [pid for pid, cmd in processes()
                if cmd.startswith(TRIAL_PROCESS) and session_of(pid) == self.session]

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class LocalRayCluster:
    root: Path
    env: dict = field(default_factory=dict)  # RAY_AUTH_MODE, the token path: for nodes and drivers
    head: Optional[Node] = None
    workers: dict = field(default_factory=dict)
    gcs_port: int = 0

    @classmethod
    def create(cls) -> "LocalRayCluster":
        # Short path: Ray's unix sockets live under the temp dir, and a socket path has <= 107 bytes.
        root = Path(tempfile.mkdtemp(prefix="tuner-ray-", dir="/tmp"))
        token = root / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        env = {
            "RAY_AUTH_MODE": "token",  # Ray >= 2.59 default for local clusters; kept on here
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        return cls(root=root, env=env)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def driver_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        return {**env, **self.env, "PYTHONUNBUFFERED": "1"}

    def start_head(self) -> None:
        self.gcs_port = free_port()
        head_env = {
            # Notice a dead node within ~3 s instead of Ray's default ~15 s, to keep the test short.
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "6",
        }
        # 0 CPUs: like cluster.yaml's head, it runs the driver but never a trial.
        self.head = self._start("head", ["--head", f"--port={self.gcs_port}",
                                         f"--dashboard-port={free_port()}",
                                         "--include-dashboard=false"],
                                num_cpus=0, num_gpus=0, extra_env=head_env)
        self._wait_for_log(self.head, "Ray runtime started")

    def add_node(self, name: str, *, num_cpus: float, num_gpus: float = 0,
                 python: Optional[str] = None, extra_env: Optional[dict] = None) -> Node:
        node = self._start(name, [f"--address={self.address}"], num_cpus=num_cpus,
                           num_gpus=num_gpus, python=python, extra_env=extra_env)
        self.workers[name] = node
        return node

    def _start(self, name: str, args: list[str], *, num_cpus: float, num_gpus: float,
               python: Optional[str] = None, extra_env: Optional[dict] = None) -> Node:
        temp_dir = Path(tempfile.mkdtemp(prefix=f"{name[:6]}-", dir=self.root))
        log = self.root / f"{name}.log"
        command = ([python, "-m", "ray.scripts.scripts"] if python else RAY_MODULE) + [
            "start", "--block", *args,
            f"--num-cpus={num_cpus:g}", f"--num-gpus={num_gpus:g}",
            f"--temp-dir={temp_dir}",
            "--object-store-memory=200000000",  # 200 MB: the trials pass no big objects
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--disable-usage-stats",
        ]
        env = {**self.driver_env(), **(extra_env or {})}
        process = subprocess.Popen(command, cwd=self.root, env=env, stdout=log.open("wb"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        return Node(name, process, temp_dir, num_cpus, num_gpus, log, python)

    def _wait_for_log(self, node: Node, text: str, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in node.log.read_text(errors="replace"):
                return
            if not node.alive():
                break
            time.sleep(0.2)
        raise RuntimeError(f"node {node.name} did not start:\n{node.log.read_text()[-3000:]}")

    def alive_nodes(self, timeout_s: float = 60) -> list[dict]:
        """The cluster's view of its live nodes (NodeID, Resources), from a short-lived driver."""
        script = ("import json, ray, sys; ray.init(address=sys.argv[1], log_to_driver=False, "
                  "configure_logging=False); print(json.dumps([{'id': n['NodeID'], 'resources': "
                  "n['Resources']} for n in ray.nodes() if n['Alive']]))")
        out = subprocess.run([sys.executable, "-c", script, self.address], env=self.driver_env(),
                             cwd=self.root, capture_output=True, text=True, timeout=timeout_s)
        if out.returncode != 0:
            raise RuntimeError(f"cannot list nodes: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def wait_for_workers(self, count: int, timeout_s: float = 90) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while True:
            nodes = self.alive_nodes()
            if len(nodes) == count + 1 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(nodes) == count + 1, f"expected {count} workers + head alive, got {nodes}"
        return nodes

    def ensure(self, specs: dict[str, dict]) -> None:
        """Starts every node of ``specs`` (name -> add_node kwargs) that is not running."""
        started = False
        for name, kwargs in specs.items():
            node = self.workers.get(name)
            if node is None or not node.alive():
                self.add_node(name, **kwargs)
                started = True
        if started:
            self.wait_for_workers(sum(1 for n in self.workers.values() if n.alive()))

    def kill_node(self, node: Node) -> int:
        """SIGKILL every process of the node, as if its machine died. Returns how many."""
        pids = node.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.process.wait(timeout=30)
        return len(pids)

    def node_of(self, pid: int) -> Optional[Node]:
        session = session_of(pid)
        for node in [*self.workers.values(), self.head]:
            if node is not None and node.session == session:
                return node
        return None

    def stop(self) -> None:
        nodes = [n for n in self.workers.values()] + ([self.head] if self.head else [])
        for node in nodes:
            if node.alive():
                node.process.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes
        for node in nodes:
            try:
                node.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            self.kill_node(node)  # whatever outlived the graceful stop
        shutil.rmtree(self.root, ignore_errors=True)
