"""Pretraining on a real two-node Ray cluster on this machine, with storage only on an S3 server.

`ray start --head` and `ray start --address` start two nodes, each with its own --temp-dir and 3
CPUs; a training worker asks for 2, so no node can hold both and Ray Train places one on each.
The data artifact is uploaded to the moto S3 server (`s3_server` in conftest.py) and the stage's
storage is an s3:// prefix: the workers read their shares of the shards from S3, and Ray Train
writes every checkpoint there. Both nodes reach the server through the AWS variables in the
environment of their `ray start`; the pretrain stage runs in a driver process of its own, as a
job's would. One run goes through; in the other, the last rank kills its own
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
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pretrain_fixtures import last_attempt_by_step, make_data_artifact, read_trace

from conftest import RAY, REPO, start_ray_head
from pajama import storage

pytestmark = pytest.mark.slow

BUCKET, STEPS = "pajama-multinode", 6
LOSS_ATOL = 1e-5

# Drivers run in processes of their own: Ray reads RAY_AUTH_MODE once per process, and this one's
# was fixed (off) when it first imported Ray.
NODES = """
import json, ray
ray.init()
print("NODES " + json.dumps([n["NodeID"] for n in ray.nodes() if n["Alive"]]))
"""
PRETRAIN = """
import json, sys
from pathlib import Path
from pajama.artifacts import Artifact
from pretrain_fixtures import run_pretrain, tiny_pretrain_config
args = json.loads(sys.argv[1])
cfg = tiny_pretrain_config(2, micro_batch_size=4, max_steps=args["steps"], checkpoint_every=3,
                           eval_every=args["steps"], scaling={"num_workers": 2, "cpus_per_worker": 2})
data = Artifact("data", "fixture", args["data"], args["manifest"])
result = run_pretrain(cfg, data, Path(args["root"]), args["name"], storage=args["storage"], **args["env"])
print("RESULT " + json.dumps(result["final_metrics"]))
"""


@dataclass
class Cluster:
    env: dict  # what a driver of this cluster needs: its address, token auth, the S3 server

    def python(self, script: str, *args: str, marker: str):
        proc = subprocess.run([sys.executable, "-c", script, *args], env=self.env, cwd=REPO, capture_output=True,
                              text=True, timeout=900)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(marker + " ")]
        assert proc.returncode == 0 and lines, proc.stdout[-4000:] + proc.stderr[-6000:]
        return json.loads(lines[-1][len(marker) + 1:])


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, s3_server):
    """A head and a second node, each started with `ray start` and its own temp dir."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # The nodes and drivers run this checkout's code, and reach the S3 server.
    path = [str(REPO / "platform"), str(REPO / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update(s3_server.env, RAY_AUTH_MODE="token", PYTHONPATH=os.pathsep.join(path),
               PAJAMA_CACHE_DIR=str(tmp_path_factory.mktemp("cache")))
    with start_ray_head(tmp_path_factory.mktemp("ray-head"), env, num_cpus=3) as head:
        node_dir = tmp_path_factory.mktemp("ray-node")
        with (node_dir / "ray-start.log").open("w") as log:
            node = subprocess.Popen([RAY, "start", f"--address={head.gcs}", "--block", "--num-cpus=3",
                                     f"--temp-dir={node_dir}", "--disable-usage-stats"],
                                    env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        try:
            cluster = Cluster({**env, "RAY_ADDRESS": head.gcs})
            deadline = time.time() + 180
            while len(cluster.python(NODES, marker="NODES")) < 2:
                if time.time() > deadline or node.poll() is not None:
                    pytest.fail(f"the second node did not join:\n{(node_dir / 'ray-start.log').read_text()[-3000:]}")
                time.sleep(2)
            yield cluster
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=60)


@pytest.fixture(scope="module")
def s3_data(s3_server, tmp_path_factory) -> dict:
    """The fixture data artifact, uploaded to S3 (no local copy is left): its URI and manifest."""
    local = tmp_path_factory.mktemp("data")
    manifest = make_data_artifact(local).manifest
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_server.env.items():
            patch.setenv(key, value)
        uri = storage.join(s3_server.bucket(BUCKET), "artifacts", "data", "fixture")
        storage.upload_dir(local, uri)
    shutil.rmtree(local)
    return {"data": uri, "manifest": manifest}


def _run(cluster: Cluster, s3_data: dict, root: Path, name: str, **env) -> tuple[dict, list[dict]]:
    """The pretrain stage, driven from a process of its own, with its storage on S3."""
    trace = root / f"trace-{name}"
    args = {**s3_data, "steps": STEPS, "root": str(root), "name": name,
            "storage": storage.join(f"s3://{BUCKET}", "project"), "env": {"PAJAMA_TRACE_DIR": str(trace), **env}}
    return cluster.python(PRETRAIN, json.dumps(args), marker="RESULT"), read_trace(trace)


def _steps(records: list[dict]) -> dict[int, tuple[list[int], float]]:
    """Per step, the global batch's sequence ids (rank order) and the loss, from the latest attempt."""
    by_rank = [last_attempt_by_step(records, r) for r in (0, 1)]
    return {s: (by_rank[0][s]["seq_index"] + by_rank[1][s]["seq_index"], by_rank[0][s]["loss"])
            for s in sorted(by_rank[0])}


def test_a_killed_worker_resumes_from_checkpoints_on_s3_across_two_nodes(two_nodes, s3_server, s3_data, tmp_path,
                                                                         monkeypatch):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    _, reference_records = _run(two_nodes, s3_data, tmp_path, "uninterrupted")
    final_metrics, records = _run(two_nodes, s3_data, tmp_path, "killed", PAJAMA_TEST_FAIL_AT_STEP="4")

    assert (tmp_path / "trace-killed" / "fault-injected").exists()
    assert not (tmp_path / "storage").exists(), "something was written to local storage"
    for run in (reference_records, records):
        nodes = {r["rank"]: r["node_id"] for r in run}
        assert set(nodes) == {0, 1} and nodes[0] != nodes[1], "both workers ran on one node"
        assert set(nodes.values()) <= set(two_nodes.python(NODES, marker="NODES"))
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
    assert final_metrics["step"] == STEPS
    assert (tmp_path / "killed" / "model" / "config.json").exists()

    # The checkpoints are in the bucket: both ranks' state at step 3, then the final one with the export.
    prefix = "project/ray_train/pretrain-killed/"
    keys = s3_server.keys(BUCKET, prefix)
    checkpoints = sorted({k[len(prefix):].split("/")[0] for k in keys
                          if k[len(prefix):].startswith("checkpoint_") and k.count("/") > prefix.count("/")})
    assert len(checkpoints) == 2, keys
    for checkpoint in checkpoints:
        assert {f"{prefix}{checkpoint}/{f}" for f in ("state-0.safetensors", "state-1.safetensors",
                                                       "train_state.json")} <= set(keys)
    states = [json.loads(storage.read_text(f"s3://{BUCKET}/{prefix}{c}/train_state.json")) for c in checkpoints]
    assert [s["step"] for s in states] == [3, STEPS]
    assert f"{prefix}{checkpoints[-1]}/hf/model.safetensors" in keys
