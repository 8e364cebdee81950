"""The Serve application's arguments (the `args:` of pipelines/serve.yaml) and the Serve
deployment options they become.

Limits that bound what one request may cost (body size, prompt length) live here with the rest
of the app's configuration; the per-request limits of the OpenAI schema (stop sequences, sampling
ranges) are in `pajama.serve.openai_schema`.
"""

from __future__ import annotations

import json
from typing import Literal

import ray
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Serve batches handed to the engine at once (it merges them); also sets max_ongoing_requests' default.
SERVE_CONCURRENT_BATCHES = 4


class ReplicaOptions(BaseModel):
    """How each model deployment is replicated and batched; set globally, overridable per model."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | Literal["auto"] = 1
    autoscaling_config: dict | None = None
    max_ongoing_requests: int | None = Field(default=None, ge=1)  # default: 4 * max_batch_size
    max_batch_size: int = Field(default=16, ge=1)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)
    num_gpus: float | Literal["auto"] = "auto"  # auto: 1 GPU per replica if the cluster has GPUs
    num_cpus: float = Field(default=1.0, ge=0)
    health_check_period_s: float = Field(default=10.0, gt=0)  # how soon a dead replica is replaced


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    source: str  # a local HF directory, or models:/<name>@<alias> / models:/<name>/<version>
    kind: Literal["base", "instruct", "chat"]
    replica: dict = Field(default_factory=dict)  # ReplicaOptions overrides for this model

    @field_validator("replica")
    @classmethod
    def _known_replica_options(cls, replica: dict) -> dict:
        ReplicaOptions.model_validate(replica)  # every field has a default: this checks names and values
        return replica


class ServeArgs(ReplicaOptions):
    models: list[ModelSpec] = Field(min_length=1)
    engine: Literal["hf", "vllm"] = "hf"
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI where build_app runs
    model_cache_dir: str | None = None  # where MLflow artifacts are downloaded (default: a temp dir)
    api_key_env: str = "PAJAMA_API_KEY"  # if this variable is set in the ingress, require the key
    default_max_tokens: int = Field(default=256, ge=1)
    # Bounded cost per request: larger bodies are refused before they are read whole (413), longer
    # prompts before they are tokenized (400). 1 MiB holds any prompt a Pajama context can take.
    max_request_bytes: int = Field(default=1 << 20, ge=1024)
    max_prompt_chars: int = Field(default=256 * 1024, ge=1)
    ingress_num_cpus: float = Field(default=0.5, ge=0)
    ingress_max_ongoing_requests: int = Field(default=256, ge=1)
    log_interval_s: float = Field(default=60.0, gt=0)

    @field_validator("models", mode="before")
    @classmethod
    def _models_from_cli(cls, models):
        # `serve run ... models='[...]'` passes every argument as a string.
        if isinstance(models, str):
            try:
                return json.loads(models)
            except json.JSONDecodeError as error:
                raise ValueError(f"models must be a JSON list of {{name, source, kind}} objects: {error}") from None
        return models

    @model_validator(mode="after")
    def _unique_names(self):
        names = [spec.name for spec in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        return self

    def replica_options(self, spec: ModelSpec) -> ReplicaOptions:
        defaults = self.model_dump(include=set(ReplicaOptions.model_fields))
        return ReplicaOptions.model_validate({**defaults, **spec.replica})


def cluster_has_gpu() -> bool:
    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) >= 1
    import torch

    return torch.cuda.is_available()


def deployment_options(name: str, options: ReplicaOptions) -> dict:
    """Serve `.options(...)` for one model deployment."""
    num_gpus = (1 if cluster_has_gpu() else 0) if options.num_gpus == "auto" else options.num_gpus
    deployment = {
        "name": name,
        "max_ongoing_requests": options.max_ongoing_requests or SERVE_CONCURRENT_BATCHES * options.max_batch_size,
        "ray_actor_options": {"num_cpus": options.num_cpus, "num_gpus": num_gpus},
        "health_check_period_s": options.health_check_period_s,
    }
    if options.autoscaling_config is not None:
        deployment["autoscaling_config"] = options.autoscaling_config
    else:
        deployment["num_replicas"] = options.num_replicas
    return deployment
