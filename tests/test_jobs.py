"""`ray job submit` of the job entrypoints against a real local `ray start --head` cluster."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
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


def _submit_command(address: str, storage: Path, script: str, *args: str) -> list[str]:
    """Exactly the README's command, with storage passed to the job through its runtime env."""
    runtime_env = f'{{"env_vars": {{"PAJAMA_STORAGE_URI": "{storage}"}}}}'
    return [RAY, "job", "submit", "--address", address, "--working-dir", ".", "--runtime-env-json",
            runtime_env, "--", "python", f"jobs/{script}", *args]


def _agent_not_up(proc: subprocess.CompletedProcess) -> bool:
    # The head answers before its job agent is up; Ray says so and asks to retry.
    return "No available agent to submit job" in proc.stdout + proc.stderr


def submit(address: str, storage: Path, script: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    command = _submit_command(address, storage, script, *args)
    for _ in range(30):
        proc = subprocess.run(command, cwd=REPO, env=_client_env(), capture_output=True, text=True, timeout=timeout)
        if not _agent_not_up(proc):
            return proc
        time.sleep(5)
    return proc


def submit_together(address: str, storage: Path, jobs: list[list[str]], timeout: int = 900) -> list:
    """Submit the jobs at once, as RayJobs sharing a cluster arrive; each result in order."""
    commands = [_submit_command(address, storage, script, *args) for script, *args in jobs]
    running = [subprocess.Popen(c, cwd=REPO, env=_client_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for c in commands]
    results = []
    for job, command, popen in zip(jobs, commands, running):
        stdout, stderr = popen.communicate(timeout=timeout)
        proc = subprocess.CompletedProcess(command, popen.returncode, stdout, stderr)
        results.append(submit(address, storage, *job) if _agent_not_up(proc) else proc)
    return results


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
    jobs = []
    for entrypoint in entrypoints:
        python, script, *args = shlex.split(entrypoint)
        assert python == "python" and script.startswith("jobs/")
        jobs.append([script.removeprefix("jobs/"), *args])
    for entrypoint, proc in zip(entrypoints, submit_together(ray_head, tiny_project.storage, jobs)):
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{entrypoint}:\n{output[-3000:]}"
        assert "up to date, reusing" in output and "Traceback" not in output, entrypoint
        if "run_all.py" in entrypoint:  # the whole DAG, then its models promoted for the RayService
            assert re.search(r"promoted pajama-base/\d+, pajama-instruct/\d+, pajama-chat/\d+ to @production",
                             output), output[-3000:]


def test_a_job_without_storage_keeps_its_artifacts_when_its_working_dir_changes(ray_head, tmp_path):
    """With no storage configured, a job's relative `.pajama` would land in Ray's copy of its working
    directory, which changes with every edit; it goes under the home directory instead."""
    checkout, home = tmp_path / "checkout", tmp_path / "home"
    shutil.copytree(REPO, checkout, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "__pycache__", ".pajama", "*.egg-info", ".pytest_cache"))
    # The job's home: the driver finds the cluster's auth token there, as under the real one.
    (home / ".ray").mkdir(parents=True)
    shutil.copy(Path.home() / ".ray" / "auth_token", home / ".ray" / "auth_token")
    runtime_env = json.dumps({"env_vars": {"HOME": str(home)}})
    command = [RAY, "job", "submit", "--address", ray_head, "--working-dir", ".", "--runtime-env-json",
               runtime_env, "--", "python", "jobs/prepare_data.py"]

    def submit_data() -> str:
        for _ in range(30):
            proc = subprocess.run(command, cwd=checkout, env=_client_env(), capture_output=True, text=True,
                                  timeout=900)
            if not _agent_not_up(proc):
                break
            time.sleep(5)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-5000:]
        return output

    assert "[pajama] data: running" in submit_data()
    readme = checkout / "README.md"
    readme.write_text(readme.read_text() + "\nAn edit: Ray uploads a new package for the next job.\n")
    second = submit_data()
    assert "[pajama] data: up to date, reusing" in second, second[-3000:]
    assert list((home / ".pajama" / "artifacts" / "data").glob("*/manifest.json"))
