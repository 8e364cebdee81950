"""Pajama's OpenAI-compatible Ray Serve application: its builder and entry points.

Topology: one FastAPI ingress deployment (`pajama.serve.ingress.OpenAIIngress`: auth, request
limits and validation, OpenAI response shapes, server-sent events, provenance headers, metrics,
the playground page) in front of one `pajama.serve.model_server.ModelServer` deployment per model
(its own replicas, GPUs and autoscaling). An app of one model is one deployment: the model decodes
in the ingress replica itself. The app's arguments are `pajama.serve.options.ServeArgs`.

Entry points:
  serve run pipelines/serve.yaml                       (also a KubeRay RayService serveConfigV2)
  serve run pajama.serve.app:build_app models='[{"name": "chat", "source": "/ckpt", "kind": "chat"}]'
  deploy(args) / probe_chat(...) / shutdown()          (the DAG's serve stage)
  serve_forever(args)                                  (blocks until Ctrl-C)

`deploy` starts Ray through `pajama.cluster.init_ray` (loopback only when it starts a local
instance) and refuses to listen beyond loopback without an API key unless `allow_insecure`.

With `engine: vllm` (vLLM installed, and a GPU in the cluster or num_gpus set) each model is a
Ray Serve LLM `LLMServer` deployment instead (`pajama.serve.vllm_backend`), behind the same ingress.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import logging
import os
import signal
import time
import urllib.request

from pydantic import ValidationError
from ray import serve

from pajama.config import ConfigError
from pajama.redact import redact_uri
from pajama.serve.ingress import OpenAIIngress
from pajama.serve.model_server import ModelServer
from pajama.serve.options import REPLICA_ENV, ModelSpec, ServeArgs, cluster_has_gpu, deployment_options

logger = logging.getLogger("ray.serve")

APP_NAME = "pajama"


def parse_args(args: dict) -> ServeArgs:
    try:
        return ServeArgs.model_validate(args)
    except ValidationError as error:
        raise ValueError(f"invalid pajama serve args:\n{error}") from None


def build_app(args: dict) -> serve.Application:
    """The Serve application builder: `import_path: pajama.serve.app:build_app` with these `args`."""
    config = parse_args(args)
    tracking_uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    storage_uri = config.storage_uri or os.environ.get("PAJAMA_STORAGE_URI")
    kinds = {spec.name: spec.kind for spec in config.models}
    limits = config.model_dump(include={"max_request_bytes", "request_body_timeout_s", "max_prompt_chars",
                                        "sse_keepalive_s"})
    ingress_args = (kinds, limits, config.api_key_env, config.log_interval_s)
    if config.engine == "vllm":
        if _vllm_usable(config):
            return _ingress_of_several(config).bind(_vllm_models(config, tracking_uri, storage_uri), *ingress_args)
        logger.warning("engine 'vllm' needs vLLM installed and a GPU (in the cluster, or num_gpus set); "
                       "serving with the HF engine instead")
    if len(config.models) == 1:
        # One model: it decodes in the ingress replica, which takes the model's replicas, resources
        # and autoscaling; every request saves a handle call and its return stream.
        (spec,) = config.models
        colocated = OpenAIIngress.options(**deployment_options(f"model-{spec.name}", config.replica_options(spec)))
        return colocated.bind({spec.name: _server_args(config, spec, tracking_uri, storage_uri)}, *ingress_args)
    handles = {}
    for spec in config.models:
        # No access log line per handle call: the proxy logs each HTTP request already.
        deployment = ModelServer.options(
            **deployment_options(f"model-{spec.name}", config.replica_options(spec)),
            logging_config={"enable_access_log": False},
        )
        handles[spec.name] = deployment.bind(**_server_args(config, spec, tracking_uri, storage_uri))
    return _ingress_of_several(config).bind(handles, *ingress_args)


def _ingress_of_several(config: ServeArgs):
    """The ingress deployment in front of model deployments of their own."""
    return OpenAIIngress.options(
        max_ongoing_requests=config.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": config.ingress_num_cpus, "runtime_env": {"env_vars": REPLICA_ENV}},
    )


def _server_args(config: ServeArgs, spec: ModelSpec, tracking_uri: str | None, storage_uri: str | None) -> dict:
    """`ModelServer`'s arguments for one model (its deployment's, or the ingress's that loads it)."""
    return {
        "spec": spec.model_dump(include={"name", "source", "kind"}),
        "tracking_uri": tracking_uri,
        "storage_uri": storage_uri,
        "cache_dir": config.model_cache_dir,
        "options": config.replica_options(spec).model_dump(include={"max_batch_size", "stall_timeout_s"}),
        "default_max_tokens": config.default_max_tokens,
    }


def _vllm_usable(config: ServeArgs) -> bool:
    """vLLM is installed, and the cluster has a GPU or every model asks for GPUs (num_gpus set): GPU
    nodes that autoscale from zero join when the LLMServer replicas ask for them."""
    if importlib.util.find_spec("vllm") is None:
        return False
    asked = [config.replica_options(spec).num_gpus for spec in config.models]
    return cluster_has_gpu() or all(gpus != "auto" and gpus > 0 for gpus in asked)


def _vllm_models(config: ServeArgs, tracking_uri: str | None, storage_uri: str | None) -> dict:
    """Each model's `LLMServer` deployment, with what /v1/models and the provenance headers say of it."""
    from pajama.models import resolve_source
    from pajama.serve import vllm_backend

    models = {}
    for spec in config.models:
        resolved = resolve_source(spec.source, tracking_uri, config.model_cache_dir, storage_uri)
        llm_config = vllm_backend.llm_config(spec.name, resolved, config.replica_options(spec))
        info = {"kind": spec.kind, "version": resolved.version, "run_id": resolved.run_id, "engine": "vllm"}
        models[spec.name] = {"vllm": vllm_backend.build_deployment(llm_config), "info": info}
    return models


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def deploy(args: dict, host: str = "127.0.0.1", port: int = 8000, *, allow_insecure: bool = False) -> str:
    """Start Serve on `host:port` (starting Ray if needed), deploy the app, return its base URL.

    Listening beyond loopback without an API key lets anyone on the network generate: refused
    unless `allow_insecure`.
    """
    config = parse_args(args)
    if not is_loopback(host) and not os.environ.get(config.api_key_env):
        if not allow_insecure:
            raise ConfigError(
                f"refusing to serve on {host} without an API key: set {config.api_key_env}, "
                "listen on 127.0.0.1, or allow it explicitly (pajama serve --allow-insecure)"
            )
        logger.warning("serving on %s WITHOUT an API key: anyone who can reach port %d can use it", host, port)
    from pajama.cluster import init_ray

    init_ray()
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    reachable_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{reachable_host}:{port}"


def shutdown() -> None:
    """Tear down Serve (Ray, if Pajama started it, ends with this process)."""
    serve.shutdown()


def serve_forever(args: dict, host: str = "127.0.0.1", port: int = 8000, *, allow_insecure: bool = False) -> None:
    """Deploy and block until Ctrl-C (or SIGTERM, as from `kill` or a container stop), then shut down."""
    base_url = deploy(args, host, port, allow_insecure=allow_insecure)
    models = ", ".join(f"{m['name']} ({redact_uri(m['source'])})" for m in args["models"])
    print(f"Pajama is serving {models} on {base_url} (playground at {base_url}/); Ctrl-C to stop", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        shutdown()


def probe_chat(
    base_url: str, model: str, messages: list[dict], api_key: str | None = None, *, max_tokens: int = 64, timeout_s: float = 120
) -> tuple[str, float]:
    """Send one non-streaming chat request over plain HTTP; return (answer text, latency in seconds)."""
    body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"{base_url.rstrip('/')}/v1/chat/completions", data=body, headers=headers)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        payload = json.load(response)
    return payload["choices"][0]["message"]["content"], time.perf_counter() - started
