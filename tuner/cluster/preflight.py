"""Pre-flight checks for a search on a Ray cluster: one clear line before any trial starts.

On a cluster, Ray reports bad input late or never: ``ray.init`` on an address where nothing listens
waits for minutes; a trial that asks for more GPUs than any node has stays PENDING forever
("infeasible"); a node without this package fails every trial with a deserialisation traceback;
a storage path that only the driver can write loses the checkpoints of trials on other nodes.
``preflight`` checks each of these first and raises ``UserError`` naming the flag or key and the
rule. It connects to Ray (through ``tuner.cluster.connect.start_ray``), so the driver's own ``start_ray``
afterwards finds Ray initialised and reuses the connection.
"""

from __future__ import annotations

import logging
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import urlparse

import pyarrow.fs
import ray
import torch
import torchvision
import yaml
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tuner.cluster.connect import ray_address_from_env, start_ray
from tuner.errors import UserError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0  # a TCP connect to the head; refused is instant, a dropped packet waits this long
PROBE_TIMEOUT_S = 120.0  # a node probe starts one Python worker and imports torch: seconds, not minutes
PROBE_RETRIES = 2  # runs of a probe whose worker died before it answered, after the first
TRIAL_MODULE = "trainables.trial"  # what every trial process imports (pulls in torch, torchvision)
TOKEN_HINT = ("with token auth on (RAY_AUTH_MODE=token), this machine needs the cluster's token: "
              "`ray get-auth-token` on the head, saved to ~/.ray/auth_token or $RAY_AUTH_TOKEN_PATH")


@dataclass(frozen=True)
class NodeShape:
    """What one node (running, or a type the autoscaler may start) offers one trial."""

    label: str
    resources: dict  # Ray resource name -> amount: "CPU", "GPU", custom ones
    running: bool
    node_id: Optional[str] = None


def preflight(
    *,
    address: Optional[str],
    storage_path: str,
    resources,
    data_dirs: Iterable[str] = (),
    source: str = "spec",
) -> None:
    """Everything a search needs from its cluster, checked before the first trial.

    ``resources`` is the spec's ResourceSpec (``cpu``, ``gpu`` per trial); ``data_dirs`` are the
    spec's data folders, which every node that runs trials must see. With ``address`` None (and no
    $RAY_ADDRESS) the search runs on the embedded local cluster: only storage and resources are
    checked there.
    """
    address = address or ray_address_from_env()
    check_address(address)
    check_storage(storage_path)
    connect(address)
    request = trial_request(resources)
    shapes = node_shapes()
    check_resources_fit(request, shapes, source=source, address=address)
    if address is None:
        return  # the embedded cluster is this process's own machine and Python
    hosts = [s for s in shapes if s.running and fits(s.resources, request)]
    if not hosts:
        log.warning("no running node can host a trial yet; the autoscaler will start one "
                    "(nodes it starts are not probed: build them from docker/)")
        return
    local_dirs = [d for d in data_dirs if "://" not in d]  # remote data is the trial's to read
    check_nodes(hosts, storage_path=storage_path, data_dirs=local_dirs)


def preflight_search(spec, places, *, address: Optional[str]) -> None:
    """``preflight`` for a SearchSpec and its SearchPlaces (the one call in ``tuner search``)."""
    preflight(address=address, storage_path=places.storage_path, resources=spec.resources,
              data_dirs=(spec.data.train, spec.data.val), source=spec.source)


# --- before connecting ---
def check_address(address: Optional[str]) -> None:
    """A reachable head, so that ``ray.init`` fails in seconds instead of waiting for minutes."""
    if address in (None, "", "local", "auto"):
        return
    if address.startswith(("http://", "https://")):
        raise UserError(
            f"--address {address}: that is the dashboard (job submission) address; give the "
            "head's GCS address HOST:6379 or ray://HOST:10001, or submit the whole search with "
            "`ray job submit --address " + address + " --working-dir . -- tuner search SPEC`"
        )
    if address.startswith("ray://"):
        try:
            import grpc  # noqa: F401  (what ray[client] adds)
        except ImportError:
            raise UserError(
                f"--address {address}: a ray:// address needs the Ray client, which is not "
                "installed here (pip install 'ray[client]==2.60.0'); or run the search on the "
                "head with `ray job submit --working-dir . -- tuner search SPEC`"
            ) from None
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(
            f"--address {address}: no Ray cluster answers at {host}:{port} ({reason}); start one "
            "with `ray start --head` or `ray up cluster.yaml`, or leave --address out to run on "
            "this machine"
        ) from None


def _host_port(address: str) -> tuple[str, int]:
    parsed = urlparse(address if "://" in address else f"gcs://{address}")
    default_port = 10001 if parsed.scheme == "ray" else 6379  # Ray's client / GCS ports
    try:
        port = parsed.port or default_port
    except ValueError:
        port = None
    if not parsed.hostname or port is None:
        raise UserError(f"--address {address}: expected HOST:PORT or ray://HOST:PORT")
    return parsed.hostname, port


def check_storage(storage_path: str) -> None:
    """Ray writes results and every checkpoint under storage_path: it must take a write here."""
    if "://" in storage_path:
        _check_remote_storage(storage_path)
        return
    folder = Path(storage_path)
    probe = folder / f".tuner-write-probe-{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"--storage {storage_path}: not a writable folder ({err.strerror or err}); results "
            "and checkpoints go there: choose a folder you can write (on a cluster: s3://BUCKET/"
            "PREFIX, gs://… or an NFS mount that every node shares)"
        ) from None


def _check_remote_storage(uri: str) -> None:
    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
        filesystem.create_dir(path, recursive=True)
        probe = f"{path.rstrip('/')}/.tuner-write-probe-{uuid.uuid4().hex}"
        with filesystem.open_output_stream(probe) as stream:
            stream.write(b"ok")
        filesystem.delete_file(probe)
    except (OSError, ValueError, ImportError) as err:  # pyarrow's errors derive from these
        raise UserError(
            f"--storage {uri}: cannot write there ({_first_line(err)}); check the bucket, the prefix "
            "and this machine's credentials (on AWS: the instance profile in cluster.yaml)"
        ) from None


# --- connecting ---
def connect(address: Optional[str]) -> None:
    """Joins the cluster (or starts the embedded one) through the driver's own start_ray."""
    try:
        start_ray(address)
    except (ConnectionError, TimeoutError) as err:
        raise UserError(f"--address {address or 'local'}: cannot join the Ray cluster "
                        f"({_first_line(err)}); {TOKEN_HINT}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --- what the cluster offers ---
def trial_request(resources) -> dict:
    """The Ray resources one trial asks for: {"CPU": n, "GPU": share} (zero amounts left out)."""
    request = {"CPU": float(resources.cpu), "GPU": float(resources.gpu)}
    return {name: amount for name, amount in request.items() if amount > 0}


def fits(offered: dict, request: dict) -> bool:
    # A trial is ONE placement-group bundle: it must fit on a single node, never across nodes.
    return all(float(offered.get(name, 0)) >= amount for name, amount in request.items())


def node_shapes() -> list[NodeShape]:
    """Running nodes, plus the node types an autoscaler may still start (with max workers > 0)."""
    shapes = [
        NodeShape(label=f"{node['NodeManagerAddress']} (node {node['NodeID'][:8]})",
                  resources=dict(node["Resources"]), running=True, node_id=node["NodeID"])
        for node in ray.nodes() if node.get("Alive")
    ]
    return shapes + autoscaler_node_types()


def autoscaler_node_types() -> list[NodeShape]:
    """Node types of an autoscaling cluster: from the GCS (autoscaler v2) or the launcher's file."""
    shapes = []
    try:
        from ray._private.state import state  # private API, may move: only inside the try

        config = state.get_cluster_config()
        for group in (config.node_group_configs if config is not None else []):
            if group.max_count != 0:
                shapes.append(NodeShape(f"node type {group.name}", dict(group.resources), False))
    except Exception as err:  # private API: best effort, never a reason to refuse a search
        log.debug("no autoscaler config in the GCS: %s", err)
    bootstrap = Path("~/ray_bootstrap_config.yaml").expanduser()  # written on the head by `ray up`
    if not shapes and bootstrap.is_file():
        node_types = (yaml.safe_load(bootstrap.read_text()) or {}).get("available_node_types", {})
        for name, node_type in node_types.items():
            if node_type.get("max_workers", 1) != 0:  # the head type (max 0) runs already
                shapes.append(NodeShape(f"node type {name}", dict(node_type.get("resources") or {}), False))
    return shapes


def check_resources_fit(request: dict, shapes: list[NodeShape], *, source: str,
                        address: Optional[str]) -> None:
    if any(fits(shape.resources, request) for shape in shapes):
        return
    asked = ", ".join(f"{amount:g} {name}" for name, amount in request.items()) or "nothing"
    offered = "; ".join(f"{s.label}: {_describe(s.resources)}" for s in shapes) or "no node"
    where = f"the cluster at {address}" if address else "this machine (the embedded cluster)"
    raise UserError(
        f"{source}: resources: one trial asks for {asked}, but no node of {where} has that much "
        f"({offered}); a trial runs on ONE node, so Ray would wait forever: lower "
        "resources.gpu/resources.cpu, or add a node type with them (cluster.yaml)"
    )


def _describe(resources: dict) -> str:
    cpu, gpu = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    return f"{cpu:g} CPU, {gpu:g} GPU"


# --- on every node that can host a trial ---
def _node_probe():
    """The probe task's function. Defined inside a function so that cloudpickle ships it BY VALUE:
    a node without this package can still run it and say what it lacks."""

    def probe(module: str, storage_path: Optional[str], data_dirs: list) -> dict:
        import importlib  # the probe runs on a node by value: it brings its own imports
        import os  # (same)
        import uuid  # (same)

        problems = []
        try:
            importlib.import_module(module)
        except Exception as err:  # ImportError, or a broken dependency under it
            problems.append(f"cannot import {module} ({type(err).__name__}: {err})")
        versions = {}
        for name in ("torch", "torchvision"):
            try:
                versions[name] = importlib.import_module(name).__version__
            except Exception:
                versions[name] = None
        try:
            import torch  # (same)

            versions["cuda"] = torch.version.cuda
        except Exception:
            versions["cuda"] = None
        if storage_path:
            probe_file = os.path.join(storage_path, f".tuner-node-probe-{uuid.uuid4().hex}")
            try:
                with open(probe_file, "wb") as handle:
                    handle.write(b"ok")
                os.remove(probe_file)
            except OSError as err:
                problems.append(f"cannot write the storage path {storage_path} ({err.strerror or err})")
        problems += [f"data folder {d} does not exist there" for d in data_dirs if not os.path.isdir(d)]
        return {"problems": problems, "versions": versions}

    return probe


def check_nodes(hosts: list[NodeShape], *, storage_path: str, data_dirs: list[str],
                timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """One zero-CPU task per node that can host a trial: imports, storage, data folders."""
    # A probe whose worker died (a loaded node, the OOM killer) runs again; Ray retries system
    # failures only, so what the probe itself reports or raises still answers at once.
    remote_probe = ray.remote(num_cpus=0, max_retries=PROBE_RETRIES)(_node_probe())
    local_storage = None if "://" in storage_path else storage_path  # cloud storage: same credentials
    refs = {
        remote_probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(host.node_id, soft=False)
        ).remote(TRIAL_MODULE, local_storage, data_dirs): host
        for host in hosts
    }
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in pending:
        ray.cancel(ref, force=True)
    failures = [f"{refs[ref].label}: did not answer within {timeout_s:g} s" for ref in pending]
    for ref in ready:
        try:
            report = ray.get(ref)
        except Exception as err:  # the worker itself could not start or crashed
            failures.append(f"{refs[ref].label}: the probe task failed ({_first_line(err)})")
            continue
        failures += [f"{refs[ref].label}: {problem}" for problem in report["problems"]]
        _warn_about_versions(refs[ref], report["versions"])
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise UserError(
            f"cluster check: {failures[0]}{more}; every node that runs trials needs this package "
            "and its dependencies (the image from docker/, or `pip install .` in cluster.yaml's "
            "setup_commands), the data and the storage path; or submit with `ray job submit "
            "--working-dir . -- tuner search SPEC` to ship the code"
        )


def _warn_about_versions(host: NodeShape, versions: dict) -> None:
    mine = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    for name, version in mine.items():
        if versions.get(name) and versions[name] != version:
            log.warning("%s runs %s %s, the driver %s %s: trials there may behave differently",
                        host.label, name, versions[name], name, version)
    if float(host.resources.get("GPU", 0)) > 0 and versions.get("torch") and not versions.get("cuda"):
        log.warning("%s offers %g GPU(s) but its torch is a CPU-only build: trials there will "
                    "train on the CPU", host.label, float(host.resources["GPU"]))
