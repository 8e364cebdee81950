"""Pretraining on a real two-node Ray cluster on this machine, with storage only on an S3 server.

`ray start --head` and `ray start --address` start two nodes, each with its own --temp-dir and 3
CPUs; a training worker asks for 2, so no node can hold both and Ray Train places one on each.
The data artifact is uploaded to the moto S3 server (`s3_server` in conftest.py) and the stage's
storage is an s3:// prefix: the workers read their shares of the shards from S3, and Ray Train
writes every checkpoint there. Both nodes reach the server through the AWS variables in the
environment of their `ray start`. One run goes through; in the other, the last rank kills its own
process after step 4 (PAJAMA_TEST_FAIL_AT_STEP), the worker group restarts from the step-3
checkpoint it reads back from S3, and the run ends with the uninterrupted run's losses.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import ray
from pretrain_fixtures import last_attempt_by_step, make_data_artifact, read_trace, run_pretrain, tiny_pretrain_config

from conftest import RAY, start_ray_head
from pajama import storage
from pajama.artifacts import Artifact

pytestmark = pytest.mark.slow

BUCKET, STEPS = "pajama-multinode", 6
LOSS_ATOL = 1e-5


@contextlib.contextmanager
def _environ(values: dict):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, s3_server):
    """A head and a second node started with `ray start`, and this process connected as the driver."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(s3_server.env, RAY_AUTH_MODE="token")
    # The driver reads and writes the S3 storage too; its local copies (the tokenizer) stay here.
    driver_env = {**s3_server.env, "RAY_AUTH_MODE": "token",
                  "PAJAMA_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    with start_ray_head(tmp_path_factory.mktemp("ray-head"), env, num_cpus=3) as head, _environ(driver_env):
        node_dir = tmp_path_factory.mktemp("ray-node")
        with (node_dir / "ray-start.log").open("w") as log:
            node = subprocess.Popen([RAY, "start", f"--address={head.gcs}", "--block", "--num-cpus=3",
                                     f"--temp-dir={node_dir}", "--disable-usage-stats"],
                                    env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        try:
            ray.init(address=head.gcs)
            deadline = time.time() + 180
            while len([n for n in ray.nodes() if n["Alive"]]) < 2:
                if time.time() > deadline or node.poll() is not None:
                    pytest.fail(f"the second node did not join:\n{(node_dir / 'ray-start.log').read_text()[-3000:]}")
                time.sleep(2)
            yield
        finally:
            ray.shutdown()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=60)


@pytest.fixture(scope="module")
def s3_data(two_nodes, s3_server, tmp_path_factory) -> Artifact:
    """The fixture data artifact, uploaded to S3; no local copy is left."""
    local = tmp_path_factory.mktemp("data")
    made = make_data_artifact(local)
    uri = storage.join(s3_server.bucket(BUCKET), "artifacts", "data", "fixture")
    storage.upload_dir(local, uri)
    shutil.rmtree(local)
    return Artifact("data", "fixture", uri, made.manifest)


def _run(s3_data, tmp_path, name: str, **env) -> tuple[dict, list[dict]]:
    cfg = tiny_pretrain_config(2, micro_batch_size=4, max_steps=STEPS, checkpoint_every=3, eval_every=STEPS,
                               scaling={"num_workers": 2, "cpus_per_worker": 2})
    trace = tmp_path / f"trace-{name}"
    result = run_pretrain(cfg, s3_data, tmp_path, name, storage=storage.join(f"s3://{BUCKET}", "project"),
                          PAJAMA_TRACE_DIR=str(trace), **env)
    return result, read_trace(trace)


def _steps(records: list[dict]) -> dict[int, tuple[list[int], float]]:
    """Per step, the global batch's sequence ids (rank order) and the loss, from the latest attempt."""
    by_rank = [last_attempt_by_step(records, r) for r in (0, 1)]
    return {s: (by_rank[0][s]["seq_index"] + by_rank[1][s]["seq_index"], by_rank[0][s]["loss"])
            for s in sorted(by_rank[0])}


def test_a_killed_worker_resumes_from_checkpoints_on_s3_across_two_nodes(two_nodes, s3_server, s3_data, tmp_path):
    reference, reference_records = _run(s3_data, tmp_path, "uninterrupted")
    result, records = _run(s3_data, tmp_path, "killed", PAJAMA_TEST_FAIL_AT_STEP="4")

    assert (tmp_path / "trace-killed" / "fault-injected").exists()
    assert not (tmp_path / "storage").exists(), "something was written to local storage"
    for run in (reference_records, records):
        nodes = {r["rank"]: r["node_id"] for r in run}
        assert set(nodes) == {0, 1} and nodes[0] != nodes[1], "both workers ran on one node"
        assert set(nodes.values()) <= {n["NodeID"] for n in ray.nodes()}
    pids = {r["pid"] for r in records if r["rank"] == 1}
    assert len(pids) == 2, "rank 1 should have run in two processes (before and after the restart)"
    # The restarted worker resumed after the step-3 checkpoint.
    first_pid = next(r["pid"] for r in records if r["rank"] == 1)
    assert [r["step"] for r in records if r["rank"] == 1 and r["pid"] != first_pid] == list(range(4, STEPS + 1))

    # Every step trained on the same sequences with the same loss as the uninterrupted run.
    expected, resumed = _steps(reference_records), _steps(records)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert [resumed[s][0] for s in resumed] == [expected[s][0] for s in expected]
    diffs = [abs(resumed[s][1] - expected[s][1]) for s in expected]
    print(f"\n[multinode] max |loss(resumed) - loss(uninterrupted)|: {max(diffs):.2e}")
    assert max(diffs) < LOSS_ATOL
    assert result["final_metrics"]["step"] == STEPS
    assert (tmp_path / "killed" / "model" / "config.json").exists()

    # The checkpoints are in the bucket: both ranks' state at step 3, then the final one with the export.
    prefix = "project/ray_train/pretrain-killed/"
    keys = s3_server.keys(BUCKET, prefix)
    checkpoints = sorted({k[len(prefix):].split("/")[0] for k in keys if k[len(prefix):].startswith("checkpoint_")})
    assert len(checkpoints) == 2, keys
    for checkpoint in checkpoints:
        assert {f"{prefix}{checkpoint}/{f}" for f in ("state-0.safetensors", "state-1.safetensors",
                                                       "train_state.json")} <= set(keys)
    states = [json.loads(storage.read_text(f"s3://{BUCKET}/{prefix}{c}/train_state.json")) for c in checkpoints]
    assert [s["step"] for s in states] == [3, STEPS]
    assert f"{prefix}{checkpoints[-1]}/hf/model.safetensors" in keys
