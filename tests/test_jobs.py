"""`ray job submit` of the job entrypoints against a real local `ray start --head` cluster."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from conftest import RAY, REPO, start_ray_head

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    with start_ray_head(tmp_path_factory.mktemp("ray-head"), _client_env()) as head:
        yield head.dashboard


def _client_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "token"
    return env


def submit(address: str, storage: Path, script: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Exactly the README's command, with storage passed to the job through its runtime env."""
    runtime_env = f'{{"env_vars": {{"PAJAMA_STORAGE_URI": "{storage}"}}}}'
    command = [RAY, "job", "submit", "--address", address, "--working-dir", ".", "--runtime-env-json",
               runtime_env, "--", "python", f"jobs/{script}", *args]
    for _ in range(30):
        proc = subprocess.run(command, cwd=REPO, env=_client_env(), capture_output=True, text=True, timeout=timeout)
        # The head answers before its job agent is up; Ray says so and asks to retry.
        if "No available agent to submit job" not in proc.stdout + proc.stderr:
            return proc
        time.sleep(5)
    return proc


def test_ray_job_submit_pretrain(ray_head, tiny_project, tiny_dag):
    # The tiny DAG's data artifact is reused; pretraining runs for real with fewer steps.
    proc = submit(ray_head, tiny_project.storage, "pretrain.py", "--set", "pretrain.max_steps=4",
                  "--set", "pretrain.checkpoint_every=2", "--set", "pretrain.eval_every=2")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert "succeeded" in output
    assert "[pajama] data: up to date, reusing" in output
    assert "[pajama] pretrain: running" in output and "[pajama] pretrain: done" in output


def test_k8s_rayjob_entrypoints_run_with_ray_job_submit(ray_head, tiny_project, tiny_dag):
    """The commands the KubeRay RayJobs run are the ones that work with `ray job submit` here.

    Against the tiny DAG's storage every stage is up to date, so each job proves its entrypoint,
    its arguments and the package import on the cluster without retraining.
    """
    from test_k8s import k8s_entrypoints

    entrypoints = k8s_entrypoints("cpu-dev")
    assert len(entrypoints) == 5
    for entrypoint in entrypoints:
        python, script, *args = shlex.split(entrypoint)
        assert python == "python" and script.startswith("jobs/")
        proc = submit(ray_head, tiny_project.storage, script.removeprefix("jobs/"), *args)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{entrypoint}:\n{output[-3000:]}"
        assert "up to date, reusing" in output and "Traceback" not in output, entrypoint
