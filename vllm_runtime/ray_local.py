"""A Ray of one's own on this machine, on loopback only (the e2e tests, the measurement
commands and local training start one in their own process)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def keep_ray_on_loopback() -> None:
    """Every Ray component this process starts binds and advertises 127.0.0.1, and vLLM's
    side channels too. Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is first
    imported, and otherwise turns even an explicit 127.0.0.1 into the box's external address
    and binds the GCS and raylet to every interface; so the variable (for the processes Ray
    spawns) is not enough in a process that imported ray before this call: the constant
    Ray's address lookup reads is set too."""
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def init_local_ray(num_cpus: int = 2) -> Path:
    """A one-node Ray in this process on 127.0.0.1, in a temp dir of its own (returned)."""
    import ray

    keep_ray_on_loopback()
    temp = Path(tempfile.mkdtemp(prefix="ps-e2e-ray-", dir="/tmp"))
    ray.init(address="local", include_dashboard=False, _temp_dir=str(temp), num_cpus=num_cpus,
             logging_level="WARNING", _node_ip_address="127.0.0.1")
    return temp
