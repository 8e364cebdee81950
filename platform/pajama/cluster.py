"""Start or join a Ray cluster so that its workers can import Pajama: the one way Pajama starts Ray.

Inside `ray job submit` (RAY_ADDRESS set by the job) or with `project.ray_address`, the driver
joins that cluster; otherwise it starts a local Ray instance, without the dashboard, that listens
on loopback only (GCS, raylet, workers, agents, metrics export, Serve replicas), so that a laptop
running `pajama run` or `pajama serve` exposes nothing to its network. Workers import `pajama` from the node's Python when
it is installed there (the container image, or `pip install -e .` on a laptop); otherwise the
driver ships the package to them with runtime_env `py_modules`.

Without the dashboard there is no State API, and Ray Train V2's detached PlacementGroupCleaner, which
asks the State API every second whether the training controller is alive, cannot tell and warns each
time ("Failed to query Ray Train Controller actor state"): a hundred lines per training stage. On a
local instance its job (freeing a dead controller's placement group) ends with the driver anyway, so
the local instance's workers run `quiet_placement_group_cleaner` first (runtime_env
`worker_process_setup_hook`), which keeps that logger's errors only.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pajama

LOOPBACK = "127.0.0.1"


def _installed() -> bool:
    try:
        importlib.metadata.distribution("pajama-platform")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def init_ray(address: str | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = None if _installed() else {"py_modules": [str(Path(pajama.__file__).parent)]}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    _use_loopback_node_ip()
    # No dashboard: its job API runs code for whoever reaches it, and Pajama does not need it.
    local_env = {**(runtime_env or {}),
                 "worker_process_setup_hook": f"{__name__}.{quiet_placement_group_cleaner.__name__}"}
    ray.init(runtime_env=local_env, log_to_driver=True, _node_ip_address=LOOPBACK, include_dashboard=False)


def quiet_placement_group_cleaner() -> None:
    """Keep only the errors of Ray Train's PlacementGroupCleaner (see the module docstring)."""
    import logging

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def _use_loopback_node_ip() -> None:
    """Make the local Ray instance bind every listener to 127.0.0.1.

    Ray 2.60 binds its gRPC servers, agents and metrics endpoint to the node IP, but on Linux
    `ray.init` replaces a loopback `_node_ip_address` with the machine's routable address unless
    Ray is in its single-machine mode (the default on Windows and macOS). That mode is read from
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when Ray is imported, so the flag is set both in the
    environment (for processes Ray starts) and on the already imported constant.
    """
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def keep_serve_replica_on_node_ip() -> None:
    """In a Serve replica of a loopback Ray node, bind the replica's gRPC server to loopback too.

    Ray Serve 2.60 starts each replica's inter-deployment gRPC server on [::] (every interface)
    whatever the node IP; callers reach it at the node IP, so on a loopback node 127.0.0.1 is all
    it needs. Called from the deployments' constructors, which run before Serve starts that server.
    """
    import ray
    from ray.serve._private import replica

    if ray.util.get_node_ip_address() != LOOPBACK or getattr(replica.add_port_to_grpc_server, "pajama", False):
        return
    add_port = replica.add_port_to_grpc_server

    def add_port_on_loopback(server, address: str):
        return add_port(server, address.replace("[::]", LOOPBACK, 1))

    add_port_on_loopback.pajama = True
    replica.add_port_to_grpc_server = add_port_on_loopback
