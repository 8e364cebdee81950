"""Pajama on object storage: the tiny DAG with nothing but `PAJAMA_STORAGE_URI=s3://…` and the
standard AWS variables, against a real S3 server on loopback (moto in server mode, reached over
HTTP by pyarrow, Ray Train and MLflow's own clients); a storage root that cannot be used stops
before any Ray work; a copied storage directory serves its own models; a job submitted with
`--working-dir` and no storage keeps its artifacts across a change of the working directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from conftest import REPO, free_port, stage_seconds

pytestmark = pytest.mark.slow

BUCKET = "pajama-e2e"
# Every stage of the tiny recipe, with fewer steps (each still checkpoints twice) and the serve stage on the
# chat model alone (one replica to start, not three): what is under test is where things are stored, which
# the local tiny DAG's tests cover for the rest.
SHORTER = [*(f"{stage}.{key}={value}" for stage, steps in (("pretrain", 20), ("instruct", 10), ("chat", 10))
             for key, value in (("max_steps", steps), ("checkpoint_every", steps // 2), ("eval_every", steps // 2))),
           "serve.models=[chat]"]
STAGES = ("references", "signals", "data", "pretrain", "instruct", "chat", "evaluate", "serve")


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PAJAMA_STORAGE_URI", "MLFLOW_S3_ENDPOINT_URL")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def _pajama(cwd: Path, env: dict, *args: str, timeout: int = 2400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pajama", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def s3_dag(s3_server, tmp_path_factory):
    """`pajama run` of the tiny recipe from an empty directory, storage only on the S3 server."""
    cwd, cache = tmp_path_factory.mktemp("s3-cwd"), tmp_path_factory.mktemp("s3-cache")
    uri = f"{s3_server.bucket(BUCKET)}/tiny"
    env = _env(PAJAMA_STORAGE_URI=uri, PAJAMA_CACHE_DIR=str(cache), **s3_server.env)
    started = time.time()
    overrides = [arg for override in [*SHORTER, f"serve.port={free_port()}"] for arg in ("--set", override)]
    proc = _pajama(cwd, env, "run", *overrides)
    output = proc.stdout + proc.stderr
    print(f"\n[tiny DAG on S3] exit {proc.returncode} in {time.time() - started:.0f}s ({stage_seconds(output)})")
    assert proc.returncode == 0, output[-6000:]
    return SimpleNamespace(uri=uri, env=env, cwd=cwd, cache=cache, output=output,
                           keys=s3_server.keys(BUCKET, "tiny/"))


def test_the_tiny_dag_keeps_everything_on_the_object_store(s3_dag):
    keys = s3_dag.keys
    for stage in STAGES:
        assert any(k.startswith(f"tiny/artifacts/{stage}/") and k.endswith("/manifest.json") for k in keys), stage
    assert any(k.startswith("tiny/artifacts/data/") and "/shards/train/" in k and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("tiny/artifacts/data/") and k.endswith("/tokenizer/tokenizer.json") for k in keys)
    for stage in ("pretrain", "instruct", "chat"):
        assert any(k.startswith(f"tiny/artifacts/{stage}/") and k.endswith("/model/model.safetensors") for k in keys)
        # Ray Train's checkpoints, written by the workers straight to the bucket.
        assert any(k.startswith("tiny/ray_train/") and "/checkpoint_" in k and "state-0.safetensors" in k
                   and f"/{stage}-" in k for k in keys), stage
    # MLflow's artifacts (the logged models the registry points at) are on the object store too.
    assert any(k.startswith("tiny/mlartifacts/") and k.endswith("model.safetensors") for k in keys)
    # Nothing of the storage on local disk: no folder named after the URI, no artifacts, no checkpoints.
    for root in (s3_dag.cwd, REPO):
        assert not list(root.glob("s3*")), list(root.glob("s3*"))
    local = [p for p in s3_dag.cwd.rglob("*")]
    assert not local, local[:10]
    assert not list(s3_dag.cache.rglob("ray_train")) and not list(s3_dag.cache.rglob("manifest.json"))


def test_the_chat_model_is_served_from_the_object_store(s3_dag, tmp_path):
    """Another machine (an empty local cache) with the same registry: `pajama serve` loads the chat
    model the DAG registered from the bucket."""
    port = free_port()
    registry = next(s3_dag.cache.glob("mlflow/*.db"))
    env = {**s3_dag.env, "PAJAMA_CACHE_DIR": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{registry}"}
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pajama", "serve", "--model",
                                 "pajama-chat=models:/pajama-chat@candidate", "--port", str(port)],
                                cwd=s3_dag.cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-4000:]
            with contextlib.suppress(httpx.HTTPError):
                reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
                    "model": "pajama-chat", "messages": [{"role": "user", "content": "What is Python?"}],
                    "max_tokens": 8, "temperature": 0})
                if reply.status_code == 200:
                    break
            time.sleep(2)
        # A briefly trained model may end its turn at once: the answer's shape is what is checked.
        choice = reply.json()["choices"][0]
        assert reply.json()["model"] == "pajama-chat" and choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] in ("stop", "length") and isinstance(choice["message"]["content"], str)
        # The weights came from the bucket: the artifact's copy is in this machine's cache now.
        assert list((tmp_path / "cache").rglob("model.safetensors"))
    finally:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_rerun_on_the_object_store_reuses_every_stage(s3_dag):
    proc = _pajama(s3_dag.cwd, s3_dag.env, "plan", "--json", *(arg for o in SHORTER for arg in ("--set", o)))
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert list(plan) == list(STAGES) and all(step["up_to_date"] for step in plan.values()), proc.stdout


@pytest.mark.parametrize("problem", ["no such bucket", "refused credentials"])
def test_unusable_storage_stops_before_any_ray_work_naming_the_uri(problem, s3_server, tmp_path):
    if problem == "no such bucket":
        uri, env = "s3://no-such-bucket-here/x", _env(PAJAMA_STORAGE_URI="s3://no-such-bucket-here/x", **s3_server.env)
        server = None
    else:
        # A second S3 server that checks credentials (moto's IAM auth from the first request on).
        port = free_port()
        server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                                  env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(port)
        uri = "s3://some-bucket/x"
        env = _env(PAJAMA_STORAGE_URI=uri, **{**s3_server.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    try:
        started = time.time()
        proc = _pajama(tmp_path, env, "run", timeout=300)
    finally:
        if server is not None:
            server.kill()
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines[-1].startswith("pajama: storage ") and uri in lines[-1], proc.stderr[-3000:]
    assert ("does not exist" if problem == "no such bucket" else "ACCESS_DENIED") in lines[-1]
    # Stopped before Ray started (and before any MLflow store was created).
    assert "Ray" not in proc.stdout + proc.stderr.replace(lines[-1], ""), proc.stderr[-3000:]
    assert time.time() - started < 60


def _wait_for_port(port: int) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
            return
        time.sleep(0.5)
    raise AssertionError(f"no server on port {port}")


def test_a_copied_storage_directory_serves_its_own_models(tiny_project, tiny_dag, tmp_path):
    """The registry inside a copy resolves each registered version to the copy's own artifact."""
    from pajama.models import resolve_model

    copy = tmp_path / "copied-storage"
    shutil.copytree(tiny_project.storage, copy, ignore=shutil.ignore_patterns("ray_train", "*.log"))
    for kind in ("base", "instruct", "chat"):
        resolved = resolve_model(f"models:/pajama-{kind}@candidate", f"sqlite:///{copy / 'mlflow.db'}",
                                 storage_uri=str(copy))
        assert copy in resolved.weights_dir.parents, (kind, resolved.weights_dir)
        assert (resolved.weights_dir / "model.safetensors").is_file()
