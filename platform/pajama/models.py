"""Find a trained model: a local Hugging Face directory, an MLflow run, or a registry version.

Fine-tuning stages take their base model from here when the recipe names one instead of the
DAG's own pretrain stage: `models:/pajama-base/3`, `models:/pajama-base@champion`, `runs:/<id>`
(the version that run registered), or a directory written by `save_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

from pajama.serve.engine import ResolvedModel, resolve_source


def resolve_model(source: str, tracking_uri: str | None = None, cache_dir: str | None = None) -> ResolvedModel:
    if source.startswith("runs:/"):
        from mlflow.tracking import MlflowClient

        run_id = source[len("runs:/"):].strip("/").split("/")[0]
        versions = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).search_model_versions(
            f"run_id = '{run_id}'")
        if not versions:
            raise LookupError(f"MLflow run {run_id} registered no model version; give models:/<name>/<version>")
        newest = max(versions, key=lambda v: int(v.version))
        source = f"models:/{newest.name}/{newest.version}"
    return resolve_source(source, tracking_uri, cache_dir)


def resolve_model_dir(source: str, tracking_uri: str | None, cache_dir: Path) -> Path:
    """A directory holding both the weights and the tokenizer of `source`."""
    resolved = resolve_model(source, tracking_uri, str(cache_dir))
    if resolved.tokenizer_dir != resolved.weights_dir:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(resolved.tokenizer_dir).save_pretrained(resolved.weights_dir)
    return resolved.weights_dir
