"""Starting or joining Ray: the embedded local cluster, ``--address``, or ``$RAY_ADDRESS``."""

from __future__ import annotations

import os
from typing import Optional

import ray


def ray_address_from_env() -> Optional[str]:
    """$RAY_ADDRESS when it names a cluster: `ray job submit` sets it for the driver it starts.

    An http(s):// value is the job server's address (set for the `ray job` CLI), not one a driver
    can join: ignored, so that `tuner search` on a laptop still starts its embedded cluster.
    """
    value = os.environ.get("RAY_ADDRESS", "").strip()
    if not value or value.startswith(("http://", "https://")):
        return None
    return value


def start_ray(address: Optional[str]) -> None:
    if ray.is_initialized():
        return
    # "local" starts a fresh embedded cluster; a plain ray.init() would try to join a stale one.
    # `ray job submit` passes the cluster in $RAY_ADDRESS (tuner resume included).
    ray.init(address=address or ray_address_from_env() or "local", include_dashboard=False,
             log_to_driver=False, configure_logging=False)
