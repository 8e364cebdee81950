"""`ray job submit` of the job entrypoints against a real local `ray start --head` cluster."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, free_port

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A head node of its own (own ports and temp dir), stopped by killing its process group."""
    dashboard = free_port()
    temp_dir = tmp_path_factory.mktemp("ray-head")
    env = _client_env()
    # Ray >= 2.59 enables token auth for local clusters; head and clients share ~/.ray/auth_token.
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={free_port()}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=5)
            break
        except urllib.error.HTTPError:
            # Any HTTP answer means the dashboard is up; with token auth it is 401 without a token.
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail("ray start --head did not bring up the dashboard/job API in 180 s")
            time.sleep(2)
    yield address
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


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
    proc = submit(ray_head, tiny_project.storage, "pretrain.py", "--set", "pretrain.max_steps=12",
                  "--set", "pretrain.checkpoint_every=6", "--set", "pretrain.eval_every=6")
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
