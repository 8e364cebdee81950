"""Self-describing stage artifacts, identified by a fingerprint of (stage, config, inputs).

An artifact is a directory `<storage>/<stage>/<fingerprint>/` holding the stage's payload, the
resolved config (`config.json`) and, written last, `manifest.json`. A stage builds its artifact in
a private staging directory and renames it into place only when complete, so a crash or a retry
never leaves a half-written artifact where a reader would take it for a finished one; an artifact
with a manifest is finished and is reused as is.

Every stage has one signature, `run(section, ctx, inputs) -> manifest`: its config section, a
`StageContext` (where to write, the project storage, its fingerprint and seed, its MLflow run) and
the upstream artifacts it reads, by stage name. The returned manifest goes into `manifest.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pajama

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

    out: Path  # the staging directory the stage writes its payload into
    storage: Path  # the project's storage root (checkpoints, caches, downloaded models)
    fingerprint: str
    seed: int = 0
    tracking_uri: str | None = None
    run_id: str | None = None  # the stage's MLflow run

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

    def log_artifact(self, path: Path) -> None:
        if self.run_id:
            self._client().log_artifact(self.run_id, str(path))

    def log_datasets(self, entries: list[dict], context: str) -> None:
        """Record inputs as MLflow datasets: {uri, name, digest, source_type, tags} each."""
        if not self.run_id or not entries:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for entry in entries:
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": local, as meant
                warnings.simplefilter("ignore", UserWarning)
                source = HuggingFaceDatasetSource(path=entry["uri"]) if entry["source_type"] == "hf_hub" \
                    else resolve_dataset_source(entry["uri"])
            dataset = MetaDataset(source, name=entry["name"], digest=entry["digest"])._to_mlflow_entity()
            tags = [InputTag("mlflow.data.context", context), *(InputTag(k, str(v)) for k, v in entry["tags"].items())]
            inputs.append(DatasetInput(dataset, tags))
        for i in range(0, len(inputs), 100):
            self._client().log_inputs(self.run_id, datasets=inputs[i : i + 100])

    def log_dict(self, value: dict, name: str) -> None:
        if self.run_id:
            self._client().log_dict(self.run_id, value, name)


@dataclass(frozen=True)
class Artifact:
    stage: str
    fingerprint: str
    path: Path
    manifest: dict

    @property
    def run_id(self) -> str | None:
        return self.manifest.get("mlflow_run_id")


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, stage: str, fp: str) -> Path:
        return self.root / stage / fp

    def find(self, stage: str, fp: str) -> Artifact | None:
        path = self.path_for(stage, fp)
        manifest = path / MANIFEST
        if not manifest.exists():
            return None
        return Artifact(stage, fp, path, json.loads(manifest.read_text()))

    def staging_dir(self, stage: str, fp: str) -> Path:
        path = self.root / stage / f".staging-{fp}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def commit(self, staging: Path, stage: str, fp: str, config: dict, inputs: dict[str, str],
               manifest: dict) -> Artifact:
        """Write config and manifest (last) into `staging` and move it into place atomically."""
        (staging / CONFIG).write_text(json.dumps({"stage": stage, "config": config, "inputs": inputs},
                                                 indent=2, sort_keys=True, default=str))
        full = {"stage": stage, "fingerprint": fp, "inputs": inputs, "created": time.time(),
                "pajama_version": pajama.__version__, **manifest}
        tmp = staging / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
        os.replace(tmp, staging / MANIFEST)
        final = self.path_for(stage, fp)
        if final.exists():
            # A concurrent or earlier attempt finished first; same fingerprint, same content.
            if (final / MANIFEST).exists():
                shutil.rmtree(staging, ignore_errors=True)
                return self.find(stage, fp)
            shutil.rmtree(final)
        os.replace(staging, final)
        return Artifact(stage, fp, final, full)
