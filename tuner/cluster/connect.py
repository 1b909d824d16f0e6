"""Starting or joining Ray: the embedded local cluster, ``--address``, or ``$RAY_ADDRESS``."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from typing import Iterator, Optional

import ray
import ray._private.ray_constants as ray_constants  # private: see _loopback_only

from tuner.errors import UserError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
AUTH_MODE_VARIABLE = "RAY_AUTH_MODE"


def ray_address_from_env() -> Optional[str]:
    """$RAY_ADDRESS when it names a cluster: `ray job submit` sets it for the driver it starts.

    An http(s):// value is the job server's address (set for the `ray job` CLI), not one a driver
    can join: ignored, so that `tuner search` on a laptop still starts its embedded cluster.
    """
    value = os.environ.get("RAY_ADDRESS", "").strip()
    if not value or value.startswith(("http://", "https://")):
        return None
    return value


def check_ray_auth_mode(insecure: bool = False) -> None:
    """Refuses a Ray without token authentication unless the user said ``--insecure``.

    Ray reads ``$RAY_AUTH_MODE`` case-insensitively: ``token`` (or the variable unset: Ray 2.60
    turns token auth on by default for a new cluster) keeps authentication on; any other value,
    ``disabled``, an empty one or a typo, turns it off, and then anyone who reaches the cluster's
    ports can run code as this user.
    """
    mode = os.environ.get(AUTH_MODE_VARIABLE)
    if mode is None or mode.lower() == "token":
        return
    if insecure:
        log.warning("%s=%s: Ray runs without token authentication (--insecure)", AUTH_MODE_VARIABLE, mode)
        return
    raise UserError(
        f"{AUTH_MODE_VARIABLE}={mode} turns off Ray's token authentication (anyone who can reach the "
        f"cluster's ports could run code as you); unset {AUTH_MODE_VARIABLE} or set it to token, "
        "or pass --insecure to run without authentication anyway"
    )


def start_ray(address: Optional[str]) -> None:
    if ray.is_initialized():
        return
    # `ray job submit` passes the cluster in $RAY_ADDRESS (tuner resume included).
    address = address or ray_address_from_env()
    if address and address != "local":
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        return
    # "local" starts a fresh embedded cluster; a plain ray.init() would try to join a stale one.
    # It is this machine's alone: every one of its servers (GCS, raylet, workers, agents) binds
    # 127.0.0.1, never the machine's network interfaces.
    with _loopback_only():
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 configure_logging=False, _node_ip_address=LOOPBACK)
    node_ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_ip).is_loopback:  # a Ray upgrade changed the rule below
        ray.shutdown()
        raise RuntimeError(f"the embedded Ray cluster came up on {node_ip}, not {LOOPBACK}: refusing "
                           "to run it on a network interface")


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Lets ``ray.init(_node_ip_address="127.0.0.1")`` keep 127.0.0.1.

    On Linux, Ray 2.60 swaps a loopback node address for the machine's routable one
    (``services.resolve_ip_for_localhost``) unless ``ENABLE_RAY_CLUSTER`` is off, as it is on macOS
    and Windows; with the node address 127.0.0.1 its gRPC servers bind 127.0.0.1 instead of every
    interface. Off only while ``ray.init`` runs; ``start_ray`` checks the address Ray ended up with.
    """
    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):  # another Ray: start_ray's check decides
        yield
        return
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
