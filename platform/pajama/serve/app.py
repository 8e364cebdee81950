"""Pajama's OpenAI-compatible Ray Serve application.

Topology: one FastAPI ingress deployment (`OpenAIIngress`: auth, validation, OpenAI response shapes,
server-sent events, provenance headers, metrics, the playground page) in front of one `ModelServer`
deployment per model (its own replicas, GPUs and autoscaling). A `ModelServer` replica loads the model
(a local HF directory or an MLflow registry version) and batches concurrent requests with
`@serve.batch`; the engine runs one `generate` call per batch and merges batches that queued up while
the model was busy (see `pajama.serve.engine`). Streaming requests get per-step events back through a
Serve streaming handle; non-streaming ones make a single handle call (`ModelServer.complete`).

Entry points:
  serve run pipelines/serve.yaml                       (also a KubeRay RayService serveConfigV2)
  serve run pajama.serve.app:build_app models='[{"name": "chat", "source": "/ckpt", "kind": "chat"}]'
  deploy(args) / probe_chat(...) / shutdown()          (the DAG's serve stage)
  serve_forever(args)                                  (blocks until Ctrl-C)

With `engine: vllm` (and vLLM installed and a GPU present) the app is `ray.serve.llm`'s OpenAI app
instead: same endpoints, vLLM's continuous batching, but without Pajama's API key check,
provenance headers and playground.
"""

import hmac
import importlib.resources
import importlib.util
import json
import logging
import os
import signal
import statistics
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Literal

import ray
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from pajama.serve import openai_schema as oai
from pajama.serve.events import Delta, Failed, Finished, Rejected, Started
from pajama.serve.openai_schema import APIError

logger = logging.getLogger("ray.serve")

APP_NAME = "pajama"
PLAYGROUND_HTML = "static/playground.html"
LATENCY_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
TOKENS_PER_S_BUCKETS = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000]
# Serve batches handed to the engine at once (it merges them); also sets max_ongoing_requests' default.
SERVE_CONCURRENT_BATCHES = 4


# ----------------------------------------------------------------------------------------------
# Application arguments (the `args:` of pipelines/serve.yaml)


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


def _cluster_has_gpu() -> bool:
    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) >= 1
    import torch

    return torch.cuda.is_available()


def _deployment_options(name: str, options: ReplicaOptions) -> dict:
    num_gpus = (1 if _cluster_has_gpu() else 0) if options.num_gpus == "auto" else options.num_gpus
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


# ----------------------------------------------------------------------------------------------
# Model replicas


@serve.deployment
class ModelServer:
    """One model, loaded once per replica; concurrent requests are batched into one `generate`."""

    def __init__(self, spec: dict, tracking_uri: str | None, cache_dir: str | None, options: dict, default_max_tokens: int):
        # torch/transformers are imported here, not at module level, so the ingress starts fast.
        from pajama.models import resolve_source
        from pajama.serve.engine import HFEngine

        self.name = spec["name"]
        self.kind = spec["kind"]
        batch_sizes = Histogram(
            "pajama_serve_generate_batch_size",
            description="Requests served by one generate call.",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
            tag_keys=("model",),
        )
        batch_sizes.set_default_tags({"model": self.name})
        resolved = resolve_source(spec["source"], tracking_uri, cache_dir)
        self.engine = HFEngine(
            resolved, kind=self.kind, max_batch_size=options["max_batch_size"], on_batch=batch_sizes.observe
        )
        self.default_max_tokens = default_max_tokens
        self._generate_batch.set_max_batch_size(options["max_batch_size"])
        self._generate_batch.set_batch_wait_timeout_s(options["batch_wait_timeout_s"])
        logger.info(
            "model %s (%s) loaded from %s: version %s, run %s, device %s",
            self.name, self.kind, spec["source"], resolved.version, resolved.run_id, self.engine.device,
        )

    def info(self) -> dict:
        return {
            "kind": self.kind,
            "version": self.engine.resolved.version,
            "run_id": self.engine.resolved.run_id,
            "context_length": self.engine.context_length,
        }

    async def generate(self, request: dict) -> AsyncIterator[Started | Rejected | Failed | Delta | Finished]:
        """Stream one request: Started (or Rejected), then Deltas and Finished (or Failed)."""
        from jinja2 import TemplateError

        from pajama.serve.engine import RequestError

        try:
            job = self.engine.prepare(**request, default_max_tokens=self.default_max_tokens)
        except RequestError as error:
            yield Rejected(str(error), error.param, error.code)
            return
        except TemplateError as error:  # the model's chat template refused these messages
            yield Rejected(f"chat template: {error}", "messages", "invalid_messages")
            return
        resolved = self.engine.resolved
        yield Started(len(job.input_ids), resolved.version, resolved.run_id)
        try:
            async for event in self._generate_batch(job):
                if event is not None:
                    yield event
        except Exception as error:  # a broken batch must not take the replica down
            logger.exception("generation failed for model %s", self.name)
            yield Failed(f"generation failed: {type(error).__name__}: {error}")
        finally:
            job.cancelled = True  # the caller is gone (or done): stop spending steps on this row

    async def complete(self, request: dict) -> list:
        """A whole non-streaming request in one call: cheaper than a streaming handle call."""
        return [event async for event in self.generate({**request, "stream": False})]

    # Serve forms batches while one runs; up to SERVE_CONCURRENT_BATCHES of them are handed to the
    # engine at once, and the engine merges those waiting into its next generate call.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01, max_concurrent_batches=SERVE_CONCURRENT_BATCHES)
    async def _generate_batch(self, jobs: list) -> AsyncIterator[list]:
        async for events in self.engine.generate_stream(jobs):
            yield events
            finished = [isinstance(event, Finished) for event in events]
            if any(finished):
                # Serve's end-of-stream sentinel: a finished caller's stream ends now, not with the batch.
                yield [StopIteration if done else None for done in finished]


# ----------------------------------------------------------------------------------------------
# Ingress


api = FastAPI(title="Pajama OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(APIError)
async def _api_error(request: Request, error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    body = APIError(error.status_code, str(error.detail), code="not_found" if error.status_code == 404 else None).body()
    return JSONResponse(body, status_code=error.status_code)


class _Summary:
    """Counts for the periodic summary log line."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._reset(time.monotonic())

    def _reset(self, now: float) -> None:
        self.since = now
        self.requests = 0
        self.errors = 0
        self.tokens = 0
        self.latencies: list[float] = []

    def record(self, status: int, latency_s: float, tokens: int) -> None:
        self.requests += 1
        self.errors += status >= 400
        self.tokens += tokens
        self.latencies.append(latency_s)
        now = time.monotonic()
        if now - self.since >= self.interval_s:
            elapsed = now - self.since
            p50, p99 = (
                statistics.quantiles(self.latencies, n=100, method="inclusive")[i] for i in (49, 98)
            ) if len(self.latencies) > 1 else (latency_s, latency_s)
            logger.info(
                "pajama serve summary: %d requests (%d errors) in %.0f s, %d completion tokens "
                "(%.1f tokens/s), latency p50 %.3f s p99 %.3f s",
                self.requests, self.errors, elapsed, self.tokens, self.tokens / elapsed, p50, p99,
            )
            self._reset(now)


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _replica_error(error: Exception) -> APIError:
    if isinstance(error, ray.exceptions.RayError):
        logger.warning("model replica failed during a request: %s", type(error).__name__)
        return APIError(503, f"the model replica failed, retry the request ({type(error).__name__})", type="server_error")
    logger.error("request failed", exc_info=error)
    return APIError(500, f"internal error: {type(error).__name__}", type="server_error")


@serve.deployment
@serve.ingress(api)
class OpenAIIngress:
    def __init__(self, models: dict[str, DeploymentHandle], kinds: dict[str, str], api_key_env: str, log_interval_s: float):
        self.models = models
        self.kinds = kinds
        self.api_key = os.environ.get(api_key_env) or None
        self.model_info: dict[str, dict] = {}
        self.playground = importlib.resources.files("pajama.serve").joinpath(PLAYGROUND_HTML).read_text()
        self.summary = _Summary(log_interval_s)
        self.requests = Counter(
            "pajama_serve_requests", description="HTTP requests by model, route and status.",
            tag_keys=("model", "route", "status"),
        )
        self.latency = Histogram(
            "pajama_serve_request_latency_s", description="Request latency (to the last byte).",
            boundaries=LATENCY_BUCKETS_S, tag_keys=("model", "route"),
        )
        self.tokens_per_s = Histogram(
            "pajama_serve_tokens_per_s", description="Completion tokens per second of each request.",
            boundaries=TOKENS_PER_S_BUCKETS, tag_keys=("model",),
        )
        self.completion_tokens = Counter(
            "pajama_serve_completion_tokens", description="Generated tokens.", tag_keys=("model",)
        )
        logger.info("pajama ingress: models %s, API key %s", sorted(models), "required" if self.api_key else "not required")

    # -- plain routes ---------------------------------------------------------------------------

    @api.get("/", response_class=HTMLResponse)
    async def playground_page(self) -> HTMLResponse:
        return HTMLResponse(self.playground)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "models": sorted(self.models)}

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> JSONResponse:
        self._authorize(request)
        data = []
        for name, handle in self.models.items():
            if name not in self.model_info:
                try:
                    self.model_info[name] = await handle.info.remote()
                except Exception as error:
                    raise _replica_error(error) from error
            info = self.model_info[name]
            data.append({"id": name, "object": "model", "created": 0, "owned_by": "pajama", "pajama": info})
        return JSONResponse({"object": "list", "data": data})

    # -- generation routes ----------------------------------------------------------------------

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._generate(request, "completions")

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._generate(request, "chat")

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key")
        if not hmac.compare_digest(header[len("Bearer "):].encode(), self.api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def _parse(self, request: Request, schema: type[BaseModel]) -> BaseModel:
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise APIError(400, f"The request body is not valid JSON: {error}", code="invalid_json") from None
        if not isinstance(payload, dict):
            raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
        try:
            return schema.model_validate(payload)
        except ValidationError as error:
            raise oai.validation_error_to_api_error(error) from None

    async def _generate(self, request: Request, route: str):
        started_at = time.monotonic()
        model = "-"
        try:
            self._authorize(request)
            is_chat = route == "chat"
            body = await self._parse(request, oai.ChatCompletionRequest if is_chat else oai.CompletionRequest)
            model = body.model
            if model not in self.models:
                raise APIError(404, f"The model '{model}' does not exist; see GET /v1/models.", param="model", code="model_not_found")
            if is_chat and self.kinds[model] == "base":
                raise APIError(400, f"'{model}' is a base model without a chat format; use /v1/completions.", param="model", code="not_chat_model")
            engine_request = {
                "max_tokens": body.token_budget() if is_chat else body.max_tokens,
                "temperature": body.temperature,
                "top_p": body.top_p,
                "top_k": body.top_k,
                "seed": body.seed,
                "stop": body.stop_sequences(),
            }
            if is_chat:
                engine_request["messages"] = [m.as_template_message() for m in body.messages]
            else:
                engine_request["prompt"] = body.prompt_text()
            handle = self.models[model]
            try:
                if body.stream:
                    stream = handle.options(stream=True).generate.remote(engine_request)
                    first = await stream.__anext__()
                else:
                    first, *rest = await handle.complete.remote(engine_request)
            except Exception as error:
                raise _replica_error(error) from error
            if isinstance(first, Rejected):
                raise APIError(400, first.message, param=first.param, code=first.code)
            headers = {
                "x-pajama-model-version": first.model_version,
                "x-pajama-run-id": first.run_id or "none",
            }
            context = {
                "id": oai.new_id("chatcmpl" if is_chat else "cmpl"),
                "created": oai.now(),
                "model": model,
                "fingerprint": f"{first.model_version}@{first.run_id or 'local'}",
            }
            if body.stream:
                events = self._stream_events(stream, first, context, is_chat, body.include_usage_in_stream(), route, started_at)
                return StreamingResponse(events, media_type="text/event-stream", headers=headers)
            return self._complete(rest, first, context, is_chat, headers, route, started_at)
        except APIError as error:
            self._record(model, route, error.status, started_at, 0)
            raise
        except Exception as error:  # nothing a request does may crash the ingress
            api_error = _replica_error(error)
            self._record(model, route, api_error.status, started_at, 0)
            raise api_error from error

    def _complete(self, events: list, first: Started, context: dict, is_chat: bool, headers: dict, route: str, started_at: float):
        last = events[-1] if events else None
        if isinstance(last, Failed):
            raise APIError(500, last.message, type="server_error")
        if not isinstance(last, Finished):
            raise APIError(503, "the model replica ended the request early, retry it", type="server_error")
        usage = oai.usage(first.prompt_tokens, last.completion_tokens)
        build = oai.chat_response if is_chat else oai.completion_response
        text = "".join(event.text for event in events)
        payload = build(**context, text=text, finish_reason=last.finish_reason, usage=usage)
        self._record(context["model"], route, 200, started_at, last.completion_tokens)
        return JSONResponse(payload, headers=headers)

    async def _stream_events(self, stream, first: Started, context: dict, is_chat: bool, include_usage: bool, route: str, started_at: float):
        status, tokens = 200, 0
        try:
            if is_chat:
                yield _sse(oai.chat_chunk(**context, delta={"role": "assistant", "content": ""}, finish_reason=None))
            async for event in stream:
                if isinstance(event, Failed):
                    raise APIError(500, event.message, type="server_error")
                if event.text:
                    yield _sse(self._chunk(context, is_chat, event.text, None))
                if isinstance(event, Finished):
                    tokens = event.completion_tokens
                    yield _sse(self._chunk(context, is_chat, "", event.finish_reason))
                    if include_usage:
                        usage = oai.usage(first.prompt_tokens, tokens)
                        yield _sse(oai.usage_chunk(**context, chat=is_chat, usage=usage))
                    yield _sse("[DONE]")
                    return
            raise APIError(503, "the model replica ended the stream early, retry the request", type="server_error")
        except Exception as error:  # noqa: BLE001 - reported to the client, never raised
            # Headers are gone already: report in-band, the way OpenAI streams report errors.
            api_error = error if isinstance(error, APIError) else _replica_error(error)
            status = api_error.status
            yield _sse(api_error.body())
        finally:
            stream.cancel()
            self._record(context["model"], route, status, started_at, tokens)

    @staticmethod
    def _chunk(context: dict, is_chat: bool, text: str, finish_reason: str | None) -> dict:
        if is_chat:
            delta = {"content": text} if text else {}
            return oai.chat_chunk(**context, delta=delta, finish_reason=finish_reason)
        return oai.completion_chunk(**context, text=text, finish_reason=finish_reason)

    def _record(self, model: str, route: str, status: int, started_at: float, tokens: int) -> None:
        latency = time.monotonic() - started_at
        self.requests.inc(tags={"model": model, "route": route, "status": str(status)})
        self.latency.observe(latency, tags={"model": model, "route": route})
        if tokens:
            self.completion_tokens.inc(tokens, tags={"model": model})
            self.tokens_per_s.observe(tokens / max(latency, 1e-6), tags={"model": model})
        self.summary.record(status, latency, tokens)


# ----------------------------------------------------------------------------------------------
# Builders and entry points


def _vllm_usable() -> bool:
    return importlib.util.find_spec("vllm") is not None and _cluster_has_gpu()


def _build_vllm_app(config: ServeArgs) -> serve.Application:
    from ray.serve.llm import LLMConfig, build_openai_app

    from pajama.models import resolve_source

    llm_configs = []
    for spec in config.models:
        # Resolved where build_app runs: the directory must be visible to the vLLM replicas.
        resolved = resolve_source(spec.source, config.tracking_uri, config.model_cache_dir)
        deployment = _deployment_options(f"vllm-{spec.name}", config.replica_options(spec))
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
    try:
        config = ServeArgs.model_validate(args)
    except ValidationError as error:
        raise ValueError(f"invalid pajama serve args:\n{error}") from None
    if config.engine == "vllm":
        if _vllm_usable():
            return _build_vllm_app(config)
        logger.warning("engine 'vllm' needs vLLM installed and a GPU; serving with the HF engine instead")
    tracking_uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    handles = {}
    for spec in config.models:
        options = config.replica_options(spec)
        deployment = ModelServer.options(**_deployment_options(f"model-{spec.name}", options))
        handles[spec.name] = deployment.bind(
            spec.model_dump(include={"name", "source", "kind"}),
            tracking_uri,
            config.model_cache_dir,
            options.model_dump(include={"max_batch_size", "batch_wait_timeout_s"}),
            config.default_max_tokens,
        )
    ingress = OpenAIIngress.options(
        max_ongoing_requests=config.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": config.ingress_num_cpus},
    )
    kinds = {spec.name: spec.kind for spec in config.models}
    return ingress.bind(handles, kinds, config.api_key_env, config.log_interval_s)


_ray_started_here = False


def deploy(args: dict, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Start Serve on `host:port` (starting Ray if needed), deploy the app, return its base URL."""
    global _ray_started_here
    if not ray.is_initialized():
        ray.init()
        _ray_started_here = True
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    reachable_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{reachable_host}:{port}"


def shutdown() -> None:
    """Tear down Serve (and Ray, if `deploy` started it)."""
    global _ray_started_here
    serve.shutdown()
    if _ray_started_here:
        ray.shutdown()
        _ray_started_here = False


def serve_forever(args: dict, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Deploy and block until Ctrl-C (or SIGTERM, as from `kill` or a container stop), then shut down."""
    base_url = deploy(args, host, port)
    print(f"Pajama is serving on {base_url} (playground at {base_url}/); Ctrl-C to stop", flush=True)
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
