"""Start or join a Ray cluster so that its workers can import Pajama.

Inside `ray job submit` (RAY_ADDRESS set by the job) or with `project.ray_address`, the driver
joins that cluster; otherwise it starts a local Ray instance. Workers import `pajama` from the
node's Python when it is installed there (the container image, or `pip install -e .` on a
laptop); otherwise the driver ships the package to them with runtime_env `py_modules`.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pajama


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
    ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
