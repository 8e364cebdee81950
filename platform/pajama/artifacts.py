"""Self-describing stage artifacts, identified by a fingerprint of (stage, config, inputs).

An artifact is a folder `<storage>/artifacts/<stage>/<fingerprint>/` (a local directory or an
object-store prefix, pajama.storage) holding the stage's payload, the resolved config
(`config.json`) and, written last, `manifest.json`. An artifact with a manifest is finished and is
reused as is; a crash or a retry never leaves a half-written artifact where a reader would take it
for a finished one (`ArtifactStore` says how, on each kind of storage).

Every stage has one signature, `run(section, ctx, inputs) -> manifest`: its config section, a
`StageContext` (where to write, the project storage, its fingerprint and seed, its MLflow run) and
the upstream artifacts it reads, by stage name. A stage writes small files into `ctx.out` (a local
directory) and large or distributed outputs (Ray Data writes, shards) under `ctx.out_uri`; both end
up in the artifact. The returned manifest goes into `manifest.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pajama
from pajama import storage

MANIFEST = "manifest.json"
CONFIG = "config.json"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(stage: str, config: dict, inputs: dict[str, str]) -> str:
    """Identity of a stage's output: its name, resolved config, upstream fingerprints and the
    code's version (a new release may change what a stage produces)."""
    payload = {"stage": stage, "config": config, "inputs": inputs, "pajama": pajama.__version__}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class StageContext:
    """Where and as what a stage runs; `run_id` is None outside a DAG run (tests, notebooks)."""

    out: Path  # a local directory for the stage's files; they become part of the artifact
    storage: str  # the project's storage root URI (checkpoints, caches)
    fingerprint: str
    seed: int = 0
    tracking_uri: str | None = None
    run_id: str | None = None  # the stage's MLflow run
    out_uri: str = ""  # the artifact's place in the storage, for large outputs written there directly

    def __post_init__(self):
        # Outside a DAG run (tests, notebooks) the artifact is the local `out` directory itself.
        object.__setattr__(self, "storage", str(self.storage))
        if not self.out_uri:
            object.__setattr__(self, "out_uri", str(self.out))

    @property
    def train_tracking(self) -> dict | None:
        """What training workers need to log to the stage's run themselves (rank 0 does)."""
        return {"uri": self.tracking_uri, "run_id": self.run_id} if self.run_id else None

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        if self.run_id:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
            for i in range(0, len(items), 1000):  # MLflow caps a batch at 1000 metrics
                self._client().log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file, or a folder's files, among the run's artifacts (under `artifact_path`)."""
        if self.run_id:
            if path.is_dir():
                self._client().log_artifacts(self.run_id, str(path), artifact_path or path.name)
            else:
                self._client().log_artifact(self.run_id, str(path), artifact_path)

    def log_datasets(self, entries: list[dict], context: str) -> None:
        """Record inputs as MLflow datasets: {uri, name, digest, source_type, tags} each."""
        if not self.run_id or not entries:
            return
        from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for entry in entries:
            source = HuggingFaceDatasetSource(path=entry["uri"]) if entry["source_type"] == "hf_hub" \
                else dataset_source(entry["uri"])
            dataset = MetaDataset(source, name=entry["name"], digest=entry["digest"])._to_mlflow_entity()
            tags = [InputTag("mlflow.data.context", context), *(InputTag(k, str(v)) for k, v in entry["tags"].items())]
            inputs.append(DatasetInput(dataset, tags))
        for i in range(0, len(inputs), 100):
            self._client().log_inputs(self.run_id, datasets=inputs[i : i + 100])

    def log_dict(self, value: dict, name: str) -> None:
        if self.run_id:
            self._client().log_dict(self.run_id, value, name)


def dataset_source(uri: str):
    """MLflow's dataset source for a path or URI. MLflow 3.17 registers its local-file source class twice, so
    that a local path "can be interpreted in multiple ways" (the same class both times): that warning is dropped."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways",
                                UserWarning)
        return resolve_dataset_source(uri)


@dataclass(frozen=True)
class Artifact:
    stage: str
    fingerprint: str
    uri: str  # where it lives in the project storage: a local path or an object-store URI
    manifest: dict

    @property
    def run_id(self) -> str | None:
        return self.manifest.get("mlflow_run_id")

    def join(self, *parts: str) -> str:
        """The URI of a file or folder inside the artifact (shards are streamed from here)."""
        return storage.join(self.uri, *parts)

    def local(self, *parts: str) -> Path:
        """A local directory holding a folder of the artifact, for what is loaded whole (a model, a
        tokenizer): the folder itself on local storage, else a cached copy."""
        return storage.local_copy(self.join(*parts))


@dataclass
class Staging:
    """Where one attempt of a stage writes: `out` on this machine, `out_uri` in the storage."""

    stage: str
    fingerprint: str
    out: Path
    out_uri: str
    lock: Any = None  # the open lock file that keeps a second run of the same stage out (local storage)


class ArtifactStore:
    """The project's artifacts under `<storage>/artifacts/<stage>/<fingerprint>/`.

    Local storage: an attempt writes into `<stage>/.staging-<fingerprint>/`, locked against a
    concurrent run of the same stage, and the finished directory is renamed into place.
    Object storage (no rename): an attempt writes large outputs straight to the artifact's own
    prefix and everything else to a local folder that is uploaded when the stage returns; the
    manifest is written last, so a prefix without one is an unfinished attempt, which the next
    attempt clears (or resumes, for a stage that resumes its phases).
    """

    def __init__(self, root: str):
        self.root = str(root)

    @classmethod
    def of(cls, storage_uri: str) -> "ArtifactStore":
        """The artifacts of the project storage rooted at `storage_uri`."""
        return cls(storage.join(storage_uri, "artifacts"))

    def uri_for(self, stage: str, fp: str) -> str:
        return storage.join(self.root, stage, fp)

    def find(self, stage: str, fp: str) -> Artifact | None:
        uri = self.uri_for(stage, fp)
        try:
            manifest = storage.read_text(storage.join(uri, MANIFEST))
        except FileNotFoundError:
            return None
        return Artifact(stage, fp, uri, json.loads(manifest))

    def begin(self, stage: str, fp: str, resume: bool = False) -> Staging:
        """Start an attempt. With `resume`, what an interrupted attempt left is kept for the stage
        to pick up (it must tell finished phases from partial ones itself); otherwise it is cleared."""
        if storage.is_local(self.root):
            parent = Path(self.root) / stage
            parent.mkdir(parents=True, exist_ok=True)
            lock = _lock(parent / f".staging-{fp}.lock")
            out = parent / f".staging-{fp}"
            if out.exists() and not resume:
                shutil.rmtree(out)
            out.mkdir(exist_ok=True)
            return Staging(stage, fp, out, str(out), lock)
        out_uri = self.uri_for(stage, fp)
        if not resume:
            storage.delete(out_uri)
        # One local folder per stage and fingerprint: what a killed attempt left there goes now.
        out = storage.cache_dir() / "staging" / f"{stage}-{fp}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        return Staging(stage, fp, out, out_uri)

    def abort(self, staging: Staging, keep: bool = False) -> None:
        """After a failed attempt: drop what it wrote (unless `keep`, for a resumable stage)."""
        if storage.is_local(self.root):
            if not keep:
                shutil.rmtree(staging.out, ignore_errors=True)
        else:
            shutil.rmtree(staging.out, ignore_errors=True)
        _unlock(staging.lock)

    def commit(self, staging: Staging, config: dict, inputs: dict[str, str], manifest: dict) -> Artifact:
        """Write config and manifest (last) and make the artifact visible."""
        stage, fp = staging.stage, staging.fingerprint
        full = {"stage": stage, "fingerprint": fp, "inputs": inputs, "created": time.time(),
                "pajama_version": pajama.__version__, **manifest}
        config_text = json.dumps({"stage": stage, "config": config, "inputs": inputs},
                                 indent=2, sort_keys=True, default=str)
        manifest_text = json.dumps(full, indent=2, sort_keys=True, default=str)
        try:
            if not storage.is_local(self.root):
                storage.upload_dir(staging.out, staging.out_uri)
                storage.write_text(storage.join(staging.out_uri, CONFIG), config_text)
                storage.write_text(storage.join(staging.out_uri, MANIFEST), manifest_text)
                shutil.rmtree(staging.out, ignore_errors=True)
                return Artifact(stage, fp, staging.out_uri, full)
            (staging.out / CONFIG).write_text(config_text)
            storage.write_text(str(staging.out / MANIFEST), manifest_text)
            final = Path(self.uri_for(stage, fp))
            if final.exists():
                # A run that did not take the lock (an older version) finished first: same content.
                if (final / MANIFEST).exists():
                    shutil.rmtree(staging.out, ignore_errors=True)
                    return self.find(stage, fp)
                shutil.rmtree(final)
            os.replace(staging.out, final)
            return Artifact(stage, fp, str(final), full)
        finally:
            _unlock(staging.lock)


def _lock(path: Path):
    """An exclusive lock held until `_unlock` (or the process ends): a second run of the same stage
    and fingerprint waits here, then finds the finished artifact."""
    import fcntl

    handle = path.open("a")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _unlock(handle) -> None:
    if handle is not None:
        handle.close()
