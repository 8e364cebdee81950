"""The Serve application's arguments (the `args:` of pipelines/serve.yaml) and the Serve
deployment options they become.

The options themselves are `pajama.config.ServeAppOptions` (one definition for the recipe's serve
section and this document), limits that bound what one request may cost (body size, prompt length)
among them; the per-request limits of the OpenAI schema (stop sequences, sampling
ranges) are in `pajama.serve.openai_schema`.
"""

from __future__ import annotations

import json
from typing import Literal

import ray
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pajama.config import ReplicaOptions, ServeAppOptions

# max_ongoing_requests' default: this many requests per batch row, decoding or waiting to join.
REQUESTS_PER_ROW = 4


# Serve runs a replica's user code, and the router of the handles it calls, each on an event loop
# in a thread of its own by default; on a few cores every request then pays thread hand-offs and
# GIL waits both ways. Pajama's replicas never block their event loop (tokenizing runs in a worker
# thread, generation in its own thread), so both run on the replica's main loop, as under Ray's
# RAY_SERVE_THROUGHPUT_OPTIMIZED.
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}

# Ray Serve's high-throughput data path (Ray >= 2.56), a setting of the whole Ray cluster (the
# environment of `ray start`, or of the process that starts a local Ray): HAProxy takes the HTTP
# port and forwards each request straight to an ingress replica's own HTTP server, where Ray's
# Python proxy actor would relay it in an actor call, and replicas call each other over gRPC. On 2
# cores it cuts what Serve adds to a request from about 12 ms to 4 (benchmarks/serve_throughput.py).
# The KubeRay RayService sets it on every pod. Locally it is opt-in (`RAY_SERVE_ENABLE_HA_PROXY=1
# RAY_SERVE_THROUGHPUT_OPTIMIZED=1 pajama serve`): HAProxy's stats (8404) and Prometheus (9101)
# listeners bind every interface, where everything else of a local Pajama Ray binds loopback.
HIGH_THROUGHPUT_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


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


class ServeArgs(ServeAppOptions):
    """The app's options (`pajama.config.ServeAppOptions`, shared with the recipe's serve section)
    plus the models it serves and where their registry is."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    models: list[ModelSpec] = Field(min_length=1)
    engine: Literal["hf", "vllm"] = "hf"
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI where build_app runs
    # The project storage: registered versions Pajama trained load from their artifact there
    # (default: PAJAMA_STORAGE_URI where build_app runs; without either, from MLflow's artifact store).
    storage_uri: str | None = None
    model_cache_dir: str | None = None  # where MLflow artifacts are downloaded (default: a temp dir)

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
        "max_ongoing_requests": options.max_ongoing_requests or REQUESTS_PER_ROW * options.max_batch_size,
        "ray_actor_options": {"num_cpus": options.num_cpus, "num_gpus": num_gpus, "runtime_env": {"env_vars": REPLICA_ENV}},
        "health_check_period_s": options.health_check_period_s,
    }
    if options.autoscaling_config is not None:
        deployment["autoscaling_config"] = options.autoscaling_config
    else:
        deployment["num_replicas"] = options.num_replicas
    return deployment
