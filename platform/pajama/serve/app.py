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

With `engine: vllm` (and vLLM installed and a GPU present) the app is `ray.serve.llm`'s OpenAI app
instead: same endpoints, vLLM's continuous batching, but without Pajama's request limits,
provenance headers and playground, and without an API key check, so it is refused while the API
key variable is set (the key would silently not be enforced).
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


def _vllm_usable() -> bool:
    return importlib.util.find_spec("vllm") is not None and cluster_has_gpu()


def _build_vllm_app(config: ServeArgs) -> serve.Application:
    from ray.serve.llm import LLMConfig, build_openai_app

    from pajama.models import resolve_source

    llm_configs = []
    for spec in config.models:
        # Resolved where build_app runs: the directory must be visible to the vLLM replicas.
        resolved = resolve_source(spec.source, config.tracking_uri, config.model_cache_dir, config.storage_uri)
        deployment = deployment_options(f"vllm-{spec.name}", config.replica_options(spec))
        deployment.pop("ray_actor_options")  # vLLM places its own GPU workers
        llm_configs.append(
            LLMConfig(
                model_loading_config={"model_id": spec.name, "model_source": str(resolved.weights_dir)},
                engine_kwargs={"tokenizer": str(resolved.tokenizer_dir), "trust_remote_code": False},
                deployment_config=deployment,
            )
        )
    return build_openai_app({"llm_configs": llm_configs})


def build_app(args: dict) -> serve.Application:
    """The Serve application builder: `import_path: pajama.serve.app:build_app` with these `args`."""
    config = parse_args(args)
    if config.engine == "vllm":
        if os.environ.get(config.api_key_env):
            raise ValueError(
                f"engine 'vllm' cannot enforce the API key in {config.api_key_env}; "
                "use engine 'hf', or unset the variable to serve without a key"
            )
        if _vllm_usable():
            logger.warning("engine 'vllm': the app serves without an API key check")
            return _build_vllm_app(config)
        logger.warning("engine 'vllm' needs vLLM installed and a GPU; serving with the HF engine instead")
    tracking_uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    storage_uri = config.storage_uri or os.environ.get("PAJAMA_STORAGE_URI")

    def server_args(spec: ModelSpec) -> dict:
        return {
            "spec": spec.model_dump(include={"name", "source", "kind"}),
            "tracking_uri": tracking_uri,
            "storage_uri": storage_uri,
            "cache_dir": config.model_cache_dir,
            "options": config.replica_options(spec).model_dump(include={"max_batch_size", "stall_timeout_s"}),
            "default_max_tokens": config.default_max_tokens,
        }

    kinds = {spec.name: spec.kind for spec in config.models}
    limits = config.model_dump(include={"max_request_bytes", "max_prompt_chars", "sse_keepalive_s"})
    ingress_args = (kinds, limits, config.api_key_env, config.log_interval_s)
    if len(config.models) == 1:
        # One model: it decodes in the ingress replica, which takes the model's replicas, resources
        # and autoscaling; every request saves a handle call and its return stream.
        (spec,) = config.models
        ingress = OpenAIIngress.options(**deployment_options(f"model-{spec.name}", config.replica_options(spec)))
        return ingress.bind({spec.name: server_args(spec)}, *ingress_args)
    handles = {}
    for spec in config.models:
        # No access log line per handle call: the proxy logs each HTTP request already.
        deployment = ModelServer.options(
            **deployment_options(f"model-{spec.name}", config.replica_options(spec)),
            logging_config={"enable_access_log": False},
        )
        handles[spec.name] = deployment.bind(**server_args(spec))
    ingress = OpenAIIngress.options(
        max_ongoing_requests=config.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": config.ingress_num_cpus, "runtime_env": {"env_vars": REPLICA_ENV}},
    )
    return ingress.bind(handles, *ingress_args)


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
