"""Find a trained model: a local Hugging Face directory, an MLflow run, or a registry version.

Fine-tuning stages take their base model from here when the recipe names one instead of the
DAG's own pretrain stage: `models:/pajama-base/3`, `models:/pajama-base@champion`, `runs:/<id>`
(the version that run registered), or a directory written by `save_pretrained`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: where its weights and tokenizer are, and where they came from."""

    weights_dir: Path
    tokenizer_dir: Path
    version: str  # "<registered name>/<version>" from MLflow, or "sha256-<hex>" for a local dir
    run_id: str | None  # the MLflow run that logged it; None for a local directory


def fingerprint_dir(path: Path) -> str:
    """A content hash of every file under `path` (names and bytes), so any change shows."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return f"sha256-{digest.hexdigest()[:16]}"


def check_source(source: str, tracking_uri: str | None = None) -> None:
    """Fail fast, naming the source, if `source` names no model (without downloading anything)."""
    if source.startswith("models:/"):
        _registry_version(source, tracking_uri)
    elif source.startswith("runs:/"):
        _newest_version_of_run(source, tracking_uri)
    elif not (Path(source).expanduser() / "config.json").is_file():
        raise FileNotFoundError(
            f"model source {source!r} is not a Hugging Face model directory (no config.json); "
            "give a directory written by save_pretrained, runs:/<id> or models:/<name>@<alias>"
        )


def resolve_source(source: str, tracking_uri: str | None = None, cache_dir: str | None = None,
                   storage_uri: str | None = None) -> ResolvedModel:
    """Resolve a local HF directory or an MLflow `models:/` URI into a loadable `ResolvedModel`.
    A registered version that Pajama trained is loaded from its artifact in `storage_uri` when
    that storage has it (see `_stored_artifact`)."""
    if source.startswith("models:/"):
        return _resolve_mlflow(source, tracking_uri, cache_dir, storage_uri)
    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model source {source!r} is not a Hugging Face model directory (no config.json); "
            "give a directory written by save_pretrained or an MLflow URI models:/<name>@<alias>"
        )
    return ResolvedModel(path, path, fingerprint_dir(path), None)


def _stored_artifact(model_version, storage_uri: str | None):
    """The artifact that registered `model_version`, looked up by the stage and fingerprint the
    version is tagged with in the given storage, not by where it was when it was registered: a
    copied storage directory, or another pod, finds its own copy. None if that storage lacks it."""
    from pajama.artifacts import ArtifactStore

    stage, fp = model_version.tags.get("pajama.stage"), model_version.tags.get("pajama.fingerprint")
    if not (storage_uri and stage and fp):
        return None
    artifact = ArtifactStore.of(storage_uri).find(stage, fp)
    return artifact if artifact is not None and "model_dir" in artifact.manifest else None


def _resolve_mlflow(uri: str, tracking_uri: str | None, cache_dir: str | None, storage_uri: str | None) -> ResolvedModel:
    import mlflow
    from mlflow.models import Model

    client, model_version = _registry_version(uri, tracking_uri)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    provenance = f"{model_version.name}/{model_version.version}"
    artifact = _stored_artifact(model_version, storage_uri)
    if artifact is not None:
        stored = artifact.local(artifact.manifest["model_dir"])
        return ResolvedModel(stored, stored, provenance, model_version.run_id)

    # Download the pinned version, not the alias, so the files match the provenance we report.
    destination = Path(cache_dir or tempfile.mkdtemp(prefix="pajama-serve-"))
    destination = destination / f"{model_version.name}-v{model_version.version}"
    artifacts = client.get_model_version_download_uri(model_version.name, model_version.version)
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=artifacts, dst_path=str(destination), tracking_uri=tracking_uri
        )
    )
    flavor = Model.load(str(local / "MLmodel")).flavors.get("transformers")
    if flavor is None:
        raise ValueError(f"{uri} was not logged with mlflow.transformers (no 'transformers' flavor in MLmodel)")
    weights_dir = local / flavor.get("model_binary", "model")
    # log_model keeps the tokenizer beside the weights when the source directory had one,
    # and always saves it as a component.
    tokenizer_dir = weights_dir if (weights_dir / "tokenizer_config.json").is_file() else local / "components" / "tokenizer"
    if not (weights_dir / "config.json").is_file() or not (tokenizer_dir / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{uri}: no HF weights/tokenizer found under {local} (looked in {weights_dir}, {tokenizer_dir})")
    return ResolvedModel(weights_dir, tokenizer_dir, provenance, model_version.run_id)


def _registry_version(uri: str, tracking_uri: str | None):
    """(client, ModelVersion) of `models:/<name>@<alias>` or `models:/<name>/<version>`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise ValueError(f"model source {uri!r} needs an MLflow tracking URI: set tracking_uri or MLFLOW_TRACKING_URI")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    reference = uri[len("models:/"):]
    try:
        if "@" in reference:
            name, alias = reference.split("@", 1)
            return client, client.get_model_version_by_alias(name, alias)
        if reference.count("/") == 1:
            name, version = reference.split("/")
            return client, client.get_model_version(name, version)
    except MlflowException as err:
        raise LookupError(f"model source {uri!r} is not in the MLflow registry: {err.message}") from None
    raise ValueError(f"model source {uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")


def _newest_version_of_run(source: str, tracking_uri: str | None) -> str:
    """`runs:/<id>` as `models:/<name>/<version>` of the newest version that run registered."""
    from mlflow.tracking import MlflowClient

    run_id = source[len("runs:/"):].strip("/").split("/")[0]
    versions = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).search_model_versions(
        f"run_id = '{run_id}'")
    if not versions:
        raise LookupError(f"MLflow run {run_id} registered no model version; give models:/<name>/<version>")
    newest = max(versions, key=lambda v: int(v.version))
    return f"models:/{newest.name}/{newest.version}"


def resolve_model(source: str, tracking_uri: str | None = None, cache_dir: str | None = None,
                  storage_uri: str | None = None) -> ResolvedModel:
    if source.startswith("runs:/"):
        source = _newest_version_of_run(source, tracking_uri)
    return resolve_source(source, tracking_uri, cache_dir, storage_uri)


def model_uri(source: str, tracking_uri: str | None, storage_uri: str | None) -> str:
    """Where training workers on any node can load `source` from: the storage URI of the artifact
    of a version Pajama trained, else a local directory (which only this machine's workers see)."""
    if source.startswith(("models:/", "runs:/")):
        if source.startswith("runs:/"):
            source = _newest_version_of_run(source, tracking_uri)
        artifact = _stored_artifact(_registry_version(source, tracking_uri)[1], storage_uri)
        if artifact is not None:
            return artifact.join(artifact.manifest["model_dir"])
    return str(resolve_model_dir(source, tracking_uri, storage_uri))


def resolve_model_dir(source: str, tracking_uri: str | None, storage_uri: str | None = None) -> Path:
    """A directory holding both the weights and the tokenizer of `source` (registry downloads go
    to this machine's cache)."""
    from pajama import storage

    resolved = resolve_model(source, tracking_uri, str(storage.cache_dir() / "models"), storage_uri)
    if resolved.tokenizer_dir != resolved.weights_dir:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(resolved.tokenizer_dir).save_pretrained(resolved.weights_dir)
    return resolved.weights_dir
