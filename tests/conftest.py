"""Shared fixtures: one real end-to-end DAG run on the tiny recipe, reused by several test modules."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    """A free port on 127.0.0.1 for a server a test starts, outside the kernel's ephemeral range and
    Ray's worker ports (10002-19999): with every Ray process on loopback, a port the kernel handed out
    could be taken by one of Ray's own connections before the server binds it."""
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    candidates = [p for p in range(20000, 32768) if not low <= p <= high]
    for port in random.Random().sample(candidates, 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port on 127.0.0.1 between 20000 and 32767")


@dataclass
class PajamaRun:
    returncode: int
    output: str
    seconds: float


@dataclass
class Project:
    """A storage directory with its own MLflow store, and a way to run `pajama` against it."""

    storage: Path

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
        env.update(PAJAMA_STORAGE_URI=str(self.storage), PYTHONUNBUFFERED="1")
        return env

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.storage / 'mlflow.db'}"

    def pajama(self, *args: str, timeout: int = 900) -> PajamaRun:
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "pajama", *args], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        run = PajamaRun(proc.returncode, proc.stdout + proc.stderr, time.time() - started)
        log = self.storage / f"pajama-{args[0]}-{int(started)}.log"
        log.write_text(run.output)
        return run

    def artifact(self, stage: str) -> tuple[Path, dict]:
        """The newest finished artifact of a stage."""
        manifests = sorted((self.storage / "artifacts" / stage).glob("*/manifest.json"),
                           key=lambda p: json.loads(p.read_text())["created"])
        assert manifests, f"no finished {stage} artifact under {self.storage}"
        return manifests[-1].parent, json.loads(manifests[-1].read_text())


@dataclass
class S3Server:
    """A real S3-compatible server (moto in server mode) on loopback; clients reach it over HTTP
    through the standard AWS environment variables in `env`."""

    endpoint: str

    @property
    def env(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "pajama-test",
                "AWS_SECRET_ACCESS_KEY": "pajama-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="pajama-test",
                            aws_secret_access_key="pajama-test-secret", region_name="us-east-1")

    def bucket(self, name: str) -> str:
        """Create bucket `name` (if needed); its s3:// URI."""
        import botocore.exceptions

        with contextlib.suppress(botocore.exceptions.ClientError):
            self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield S3Server(f"http://127.0.0.1:{port}")
    server.stop()


@dataclass
class RayHead:
    dashboard: str  # the job API, for `ray job submit --address`
    gcs: str        # for drivers: RAY_ADDRESS, `serve run --address`


@contextlib.contextmanager
def start_ray_head(temp_dir: Path, env: dict, num_cpus: int = 2):
    """`ray start --head` with its own ports and temp dir, stopped by killing its process group.

    Ray >= 2.59 enables token auth for local clusters: head and clients share
    ~/.ray/auth_token, generated here, and clients need RAY_AUTH_MODE=token in `env`.
    """
    dashboard, gcs = free_port(), free_port()
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    log = temp_dir / "ray-start.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [RAY, "start", "--head", "--block", f"--port={gcs}", f"--num-cpus={num_cpus}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             f"--temp-dir={temp_dir}", "--disable-usage-stats"],
            env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=5)
            break
        except urllib.error.HTTPError:
            break  # any HTTP answer means the dashboard is up (401: token auth without a token)
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"ray start --head did not bring up the dashboard/job API:\n{log.read_text()[-3000:]}")
            time.sleep(2)
    try:
        yield RayHead(dashboard=address, gcs=f"127.0.0.1:{gcs}")
    finally:
        # A throwaway cluster: no graceful shutdown (it takes ~30 s), the whole process group goes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray for one test module, stopped after it, so modules that need their own Ray
    (a two-node cluster, Serve) can start one."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    if started_here:
        ray.shutdown()


# The chat-only change that test_e2e.py and test_evaluate.py both make (a new learning rate and fewer
# steps, still two checkpoints): whichever runs second reuses the chat model the first trained.
CHAT_ONLY_CHANGE = ("--set", "chat.learning_rate=5e-4", "--set", "chat.max_steps=10",
                    "--set", "chat.checkpoint_every=5", "--set", "chat.eval_every=5")


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Project:
    return Project(tmp_path_factory.mktemp("pajama-tiny"))


@pytest.fixture(scope="session")
def tiny_dag(tiny_project) -> PajamaRun:
    """The README's main job: the whole DAG on the tiny recipe, CPU, bundled data."""
    # A bound, not a speed target: the README's budget is 10 minutes on 2 idle cores.
    run = tiny_project.pajama("run", "--set", f"serve.port={free_port()}", timeout=2400)
    print(f"\n[tiny DAG] exit {run.returncode} in {run.seconds:.0f}s ({stage_seconds(run.output)})")
    assert run.returncode == 0, run.output[-6000:]
    return run


@pytest.fixture(scope="module")
def client(tiny_project, tiny_dag):
    """An MLflow client on the tiny DAG's tracking store and registry."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tiny_project.tracking_uri)
    return MlflowClient(tiny_project.tracking_uri, registry_uri=tiny_project.tracking_uri)


def stage_seconds(output: str) -> str:
    """The seconds each stage of a `pajama run` took, from its "[pajama] <stage>: done in <n>s" lines."""
    done = re.findall(r"\[pajama\] (\w+): done in (\d+)s", output)
    return ", ".join(f"{stage} {seconds}s" for stage, seconds in done)


def dag_runs(client) -> list:
    """The DAG runs of the `pajama` experiment, oldest first."""
    exp = client.get_experiment_by_name("pajama")
    return client.search_runs([exp.experiment_id], "tags.`pajama.dag` = 'true'", order_by=["attributes.start_time ASC"])


def stage_runs(client, parent_id: str) -> dict:
    """The stage runs of one DAG run, by stage."""
    exp = client.get_experiment_by_name("pajama")
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.data.tags["pajama.stage"]: r for r in runs}


def run_data_stages(cfg, out: Path, storage_root, out_uri: str = "") -> dict:
    """The references, signals and data stages, as the DAG runs them (outside a DAG run): the first two
    go to `<out>.references` and `<out>.signals` (or beside `out_uri`), the data artifact to `out` (or
    `out_uri`). Returns the data stage's manifest."""
    from pajama import storage
    from pajama.artifacts import Artifact, StageContext
    from pajama.data import references, signal_stage, stage

    inputs = {}
    for name, run in (("references", references.run), ("signals", signal_stage.run)):
        local = out.with_name(f"{out.name}.{name}")
        local.mkdir(exist_ok=True)
        uri = f"{out_uri}.{name}" if out_uri else str(local)
        manifest = run(cfg, StageContext(local, storage_root, "test", out_uri=uri), dict(inputs))
        if out_uri:  # what the DAG's commit does: the stage's small local files join its artifact
            storage.upload_dir(local, uri)
        inputs[name] = Artifact(name, "test", uri, manifest)
    return stage.run(cfg, StageContext(out, storage_root, "test", out_uri=out_uri), {"signals": inputs["signals"]})
