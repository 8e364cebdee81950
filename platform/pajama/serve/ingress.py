"""The HTTP ingress of Pajama's Serve app: the OpenAI API in front of the model deployments.

`OpenAIIngress` authenticates, bounds and validates each request before any model sees it, shapes
responses and server-sent events the way OpenAI's clients parse them, adds provenance headers,
records metrics, and serves the playground page. Its rules for what a client gets back:

- every mistake of the client is a 4xx naming it (413 for a body over `max_request_bytes`, 415
  for a JSON endpoint called without `Content-Type: application/json`, which also keeps web pages
  from posting to a keyless local server with a "simple" cross-site request, 408 for a body that has
  not arrived whole within `request_body_timeout_s`, which OpenAI's clients send again);
- 503 only where a retry can help (a replica died or is overloaded), 500 for anything else;
- an error of one request is that request's alone, in-band once a stream has started;
- metric labels take only bounded values: a model name the app does not serve is "unknown".

A stream writes everything the replica had ready in one go (a chunk per choice with news), and an
SSE comment whenever nothing came for `sse_keepalive_s`, so proxies keep a slow stream open.

A model is reached through the handle of its own deployment (`RemoteModel`) or, in an app of one
model, loaded in the ingress replica itself (`InProcessModel`): one actor hop less per request, as
Ray Serve LLM makes its single-model server the HTTP ingress. Both speak the HF engine's events,
which the ingress shapes into OpenAI responses; a vLLM model (`pajama.serve.vllm_backend.VLLMModel`)
answers in OpenAI's format itself, and the ingress passes that through.
"""

import asyncio
import contextlib
import hmac
import importlib.resources
import json
import logging
import os
import statistics
import time

import ray
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from pajama.cluster import keep_serve_replica_on_node_ip
from pajama.serve import openai_schema as oai
from pajama.serve.events import Failed, Finished, Rejected, Started
from pajama.serve.model_server import ModelServer
from pajama.serve.openai_schema import APIError

logger = logging.getLogger("ray.serve")

PLAYGROUND_HTML = "static/playground.html"
LATENCY_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
TOKENS_PER_S_BUCKETS = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000]
KEEPALIVE = ": keep-alive\n\n"  # an SSE comment: clients ignore it, proxies see traffic
UNKNOWN_MODEL = "unknown"  # the metric label of every request that names no served model
# Failures a retry can get past: the replica died or is restarting, or the deployment is overloaded.
RETRYABLE = (
    ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
    BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError,
)


# /docs (Swagger UI, which loads its script from a CDN) and /openapi.json are open, like /healthz:
# they describe the API and hold nothing secret.
api = FastAPI(title="Pajama OpenAI-compatible API", docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")


def _openapi() -> dict:
    """FastAPI's schema, plus the request bodies that the routes read and validate themselves."""
    if api.openapi_schema is None:
        schema = get_openapi(title=api.title, version=api.version, routes=api.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (oai.CompletionRequest, oai.ChatCompletionRequest):
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[model.__name__] = definition
        api.openapi_schema = schema
    return api.openapi_schema


api.openapi = _openapi


def _body(model: type[BaseModel]) -> dict:
    """`openapi_extra` naming a route's JSON request body."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


@api.exception_handler(APIError)
async def _api_error(request: Request, error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    body = APIError(error.status_code, str(error.detail), code="not_found" if error.status_code == 404 else None).body()
    return JSONResponse(body, status_code=error.status_code)


class Summary:
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


async def _with_keepalive(stream, interval_s: float):
    """The stream's items, and None each time nothing came for `interval_s` (time for a keep-alive)."""
    pending = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(stream.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield None
                continue
            ready, pending = pending, None
            try:
                item = ready.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()


def _merge(events: list) -> list[tuple[int, str, tuple, Finished | None]]:
    """A replica's event list as (choice, text, logprobs, its Finished or None), one entry per choice."""
    merged: dict[int, list] = {}
    for event in events:
        entry = merged.setdefault(event.index, [event.index, "", (), None])
        entry[1] += event.text
        entry[2] += event.logprobs
        if isinstance(event, Finished):
            entry[3] = event
    return [tuple(entry) for entry in merged.values()]


class _Reply:
    """How one request's choices are shaped: chat or completion, with or without logprobs."""

    def __init__(self, context: dict, is_chat: bool, choices: int, logprobs: bool):
        self.context = context
        self.is_chat = is_chat
        self.choices = choices
        self.logprobs = logprobs
        self.offsets = [0] * choices  # where each completion choice's next token starts in its text

    def _logprobs(self, index: int, entries: tuple) -> dict | None:
        if not self.logprobs:
            return None
        if self.is_chat:
            return oai.chat_logprobs(entries)
        logprobs, self.offsets[index] = oai.completion_logprobs(entries, self.offsets[index])
        return logprobs

    def choice(self, index: int, events: list) -> dict:
        """One choice of a whole (non-streamed) response from its events."""
        text = "".join(event.text for event in events)
        logprobs = self._logprobs(index, tuple(entry for event in events for entry in event.logprobs))
        build = oai.chat_choice if self.is_chat else oai.completion_choice
        return build(index, text, events[-1].finish_reason, logprobs)

    def chat_chunk(self, index: int, delta: dict, entries: tuple, finish_reason: str | None) -> dict:
        logprobs = self._logprobs(index, entries) if entries else None
        return oai.chat_chunk(**self.context, index=index, delta=delta, finish_reason=finish_reason, logprobs=logprobs)

    def chunk(self, index: int, text: str, entries: tuple, finish_reason: str | None) -> dict:
        if self.is_chat:
            return self.chat_chunk(index, {"content": text} if text else {}, entries, finish_reason)
        logprobs = self._logprobs(index, entries) if entries else None
        choice = oai.completion_choice(index, text, finish_reason, logprobs)
        return oai.completion_response(**self.context, choices=[choice], usage=None)


def _replica_error(error: Exception) -> APIError:
    if isinstance(error, RETRYABLE):
        logger.warning("model replica unavailable during a request: %s", type(error).__name__)
        return APIError(503, f"the model replica is unavailable, retry the request ({type(error).__name__})", type="server_error")
    logger.error("request failed", exc_info=error)
    return APIError(500, f"internal error: {type(error).__name__}", type="server_error")


def _failed(event: Failed) -> APIError:
    return APIError(503 if event.retryable else 500, event.message, type="server_error")


def _no_json_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


async def read_json_body(request: Request, max_bytes: int, timeout_s: float) -> dict:
    """The request's JSON object, read only as far as `max_bytes` allow and only for `timeout_s` seconds."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise APIError(415, "Send the request body as JSON with 'Content-Type: application/json'.", code="unsupported_media_type")
    too_large = APIError(413, f"The request body is larger than {max_bytes} bytes.", code="request_too_large")
    try:
        declared = int(request.headers.get("content-length", "0"))
    except ValueError:
        raise APIError(400, "Invalid Content-Length header.", code="invalid_request") from None
    if declared > max_bytes:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():  # chunked bodies declare no length: count while reading
                body += chunk
                if len(body) > max_bytes:
                    raise too_large
    except TimeoutError:
        # A client that stalls, or a request Ray Serve retried on another replica after the first had
        # read its body: the proxy does not send a body twice, so without a bound it would wait forever.
        logger.warning("request body incomplete after %.0f s (%d bytes read): 408", timeout_s, len(body))
        raise APIError(408, f"The request body did not arrive within {timeout_s:g} s; send the request again.",
                       code="request_timeout") from None
    try:
        payload = json.loads(body, parse_constant=_no_json_constant)
        # A \ud800 escape decodes to a lone surrogate, which no tokenizer (nor UTF-8) can take.
        json.dumps(payload, ensure_ascii=False).encode()
    except (ValueError, UnicodeError, RecursionError) as error:
        raise APIError(400, f"The request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return payload


class RemoteModel:
    """A model in a deployment of its own, reached through its Serve handle."""

    openai_responses = False

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle
        self.streaming = handle.options(stream=True)  # made once, not per request

    def stream(self, request: dict):
        return self.streaming.generate.remote(request)

    async def complete(self, request: dict) -> list:
        return await self.handle.complete.remote(request)

    async def info(self) -> dict:
        return await self.handle.info.remote()

    def check_health(self) -> None:
        pass  # its own replicas report their health


class InProcessModel:
    """A model loaded in this replica (`ModelServer`'s class, not its deployment): no handle hop."""

    openai_responses = False

    def __init__(self, server_args: dict):
        self.server = ModelServer.func_or_class(**server_args)

    def stream(self, request: dict) -> "_LocalStream":
        return _LocalStream(self.server.generate(request))

    async def complete(self, request: dict) -> list:
        return await self.server.complete(request)

    async def info(self) -> dict:
        return self.server.info()

    def check_health(self) -> None:
        self.server.check_health()


class _LocalStream:
    """An in-process generation stream with the `cancel()` of a Serve response stream."""

    def __init__(self, events):
        self._events = events
        self._closing = None

    def __aiter__(self):
        return self

    def __anext__(self):
        return self._events.__anext__()

    def cancel(self) -> None:
        # Closing cancels the request's jobs. A generator still running is being cancelled by its
        # pending step (see _with_keepalive), which closes it as well.
        async def close():
            with contextlib.suppress(RuntimeError):
                await self._events.aclose()

        self._closing = asyncio.ensure_future(close())


def _served(model: DeploymentHandle | dict):
    if isinstance(model, DeploymentHandle):
        return RemoteModel(model)
    if "vllm" in model:
        from pajama.serve.vllm_backend import VLLMModel  # Ray Serve LLM's modules: seconds to import

        return VLLMModel(model["vllm"], model["info"])
    return InProcessModel(model)


@serve.deployment
@serve.ingress(api)
class OpenAIIngress:
    def __init__(self, models: dict[str, DeploymentHandle | dict], kinds: dict[str, str], limits: dict,
                 api_key_env: str, log_interval_s: float):
        """`models`: each model's deployment handle, `{"vllm": handle, "info": ...}` for a vLLM
        deployment, or the `ModelServer` arguments of a model to load in this replica."""
        keep_serve_replica_on_node_ip()
        self.models = {name: _served(model) for name, model in models.items()}
        self.kinds = kinds
        self.max_request_bytes = limits["max_request_bytes"]
        self.request_body_timeout_s = limits["request_body_timeout_s"]
        self.max_prompt_chars = limits["max_prompt_chars"]
        self.sse_keepalive_s = limits["sse_keepalive_s"]
        self.api_key = os.environ.get(api_key_env) or None
        self.model_info: dict[str, dict] = {}
        self.playground = importlib.resources.files("pajama.serve").joinpath(PLAYGROUND_HTML).read_text()
        self.summary = Summary(log_interval_s)
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
        if self.api_key is None:
            logger.warning(
                "pajama ingress: %s is not set, so anyone who can reach this app can use it; "
                "set it wherever the app listens beyond loopback", api_key_env,
            )

    # -- plain routes ---------------------------------------------------------------------------

    @api.get("/", response_class=HTMLResponse)
    async def playground_page(self) -> HTMLResponse:
        return HTMLResponse(self.playground)

    def check_health(self) -> None:
        """Serve's replica health check: fails while a model loaded here is stuck."""
        for model in self.models.values():
            model.check_health()

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "models": sorted(self.models)}

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> JSONResponse:
        self._authorize(request)
        data = []
        for name, served in self.models.items():
            if name not in self.model_info:
                try:
                    self.model_info[name] = await served.info()
                except Exception as error:
                    raise _replica_error(error) from error
            info = self.model_info[name]
            data.append({"id": name, "object": "model", "created": 0, "owned_by": "pajama", "pajama": info})
        return JSONResponse({"object": "list", "data": data})

    # -- generation routes ----------------------------------------------------------------------

    @api.post("/v1/completions", openapi_extra=_body(oai.CompletionRequest))
    async def completions(self, request: Request):
        return await self._generate(request, "completions")

    @api.post("/v1/chat/completions", openapi_extra=_body(oai.ChatCompletionRequest))
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
        payload = await read_json_body(request, self.max_request_bytes, self.request_body_timeout_s)
        try:
            return schema.model_validate(payload)
        except ValidationError as error:
            raise oai.validation_error_to_api_error(error) from None

    async def _generate(self, request: Request, route: str):
        started_at = time.monotonic()
        model = UNKNOWN_MODEL
        try:
            self._authorize(request)
            is_chat = route == "chat"
            body = await self._parse(request, oai.ChatCompletionRequest if is_chat else oai.CompletionRequest)
            if body.model not in self.models:
                raise APIError(404, f"The model '{body.model}' does not exist; see GET /v1/models.", param="model", code="model_not_found")
            model = body.model
            if is_chat and self.kinds[model] == "base":
                raise APIError(400, f"'{model}' is a base model without a chat format; use /v1/completions.", param="model", code="not_chat_model")
            if body.prompt_chars() > self.max_prompt_chars:
                raise APIError(400, f"The prompt is longer than {self.max_prompt_chars} characters.",
                               param="messages" if is_chat else "prompt", code="context_length_exceeded")
            served = self.models[model]
            if served.openai_responses:
                return await self._pass_through(served, body, is_chat, route, started_at)
            engine_request = {
                "max_tokens": body.token_budget() if is_chat else body.max_tokens,
                "temperature": body.temperature,
                "top_p": body.top_p,
                "top_k": body.top_k,
                "seed": body.seed,
                "stop": body.stop_sequences(),
                "n": body.n,
            }
            if is_chat:
                engine_request["messages"] = [m.as_template_message() for m in body.messages]
                engine_request["logprobs"] = body.logprobs_count()
            else:
                engine_request.update(prompts=body.prompts(), logprobs=body.logprobs, echo=body.echo)
            try:
                if body.stream:
                    stream = served.stream(engine_request)
                    first = await stream.__anext__()
                else:
                    first, *rest = await served.complete(engine_request)
            except Exception as error:
                raise _replica_error(error) from error
            if isinstance(first, Rejected):
                raise APIError(400, first.message, param=first.param, code=first.code)
            if isinstance(first, Failed):
                raise _failed(first)
            headers = {
                "x-pajama-model-version": first.model_version,
                "x-pajama-run-id": first.run_id or "none",
            }
            reply = _Reply(
                context={
                    "id": oai.new_id("chatcmpl" if is_chat else "cmpl"),
                    "created": oai.now(),
                    "model": model,
                    "fingerprint": f"{first.model_version}@{first.run_id or 'local'}",
                },
                is_chat=is_chat, choices=body.choices(), logprobs=engine_request["logprobs"] is not None,
            )
            if body.stream:
                events = self._stream_events(stream, first, reply, body.include_usage_in_stream(), route, started_at)
                return StreamingResponse(events, media_type="text/event-stream", headers=headers)
            return self._complete(rest, first, reply, headers, route, started_at)
        except APIError as error:
            self._record(model, route, error.status, started_at, 0)
            raise
        except Exception as error:  # nothing a request does may crash the ingress
            api_error = _replica_error(error)
            self._record(model, route, api_error.status, started_at, 0)
            raise api_error from error

    async def _pass_through(self, served, body: BaseModel, is_chat: bool, route: str, started_at: float):
        """A model that answers in OpenAI's format (vLLM): its response as it is, with provenance."""
        model = body.model
        try:
            whole, stream, status = await served.respond(body, is_chat)
        except Exception as error:
            raise _replica_error(error) from error
        info = await served.info()
        headers = {"x-pajama-model-version": info["version"], "x-pajama-run-id": info["run_id"] or "none"}
        if stream is None:
            tokens = (whole.get("usage") or {}).get("completion_tokens", 0) if status == 200 else 0
            self._record(model, route, status, started_at, tokens)
            return JSONResponse(whole, status_code=status, headers=headers)

        async def recorded():
            try:
                async for packet in stream:
                    yield packet
            finally:
                self._record(model, route, 200, started_at, 0)

        return StreamingResponse(recorded(), media_type="text/event-stream", headers=headers)

    def _complete(self, items: list, first: Started, reply: "_Reply", headers: dict, route: str, started_at: float):
        failed = next((item for item in items if isinstance(item, Failed)), None)
        if failed is not None:
            raise _failed(failed)
        events = [event for item in items for event in item]
        finished = {event.index: event for event in events if isinstance(event, Finished)}
        if len(finished) < reply.choices:
            raise APIError(503, "the model replica ended the request early, retry it", type="server_error")
        tokens = sum(event.completion_tokens for event in finished.values())
        choices = [reply.choice(index, [e for e in events if e.index == index]) for index in range(reply.choices)]
        build = oai.chat_response if reply.is_chat else oai.completion_response
        payload = build(**reply.context, choices=choices, usage=oai.usage(first.prompt_tokens, tokens))
        self._record(reply.context["model"], route, 200, started_at, tokens)
        return JSONResponse(payload, headers=headers)

    async def _stream_events(self, stream, first: Started, reply: "_Reply", include_usage: bool, route: str, started_at: float):
        status, tokens, open_choices = 200, 0, reply.choices
        try:
            if reply.is_chat:
                yield "".join(_sse(reply.chat_chunk(index, {"role": "assistant", "content": ""}, (), None))
                              for index in range(reply.choices))
            async for item in _with_keepalive(stream, self.sse_keepalive_s):
                if item is None:
                    yield KEEPALIVE
                    continue
                if isinstance(item, Failed):
                    raise _failed(item)
                # Everything the replica had ready goes out in one write: a chunk per choice with news.
                out = []
                for index, text, logprobs, end in _merge(item):
                    if text or logprobs:
                        out.append(_sse(reply.chunk(index, text, logprobs, None)))
                    if end is not None:
                        out.append(_sse(reply.chunk(index, "", (), end.finish_reason)))
                        tokens += end.completion_tokens
                        open_choices -= 1
                if not open_choices:
                    if include_usage:
                        out.append(_sse(oai.usage_chunk(**reply.context, chat=reply.is_chat,
                                                        usage=oai.usage(first.prompt_tokens, tokens))))
                    out.append(_sse("[DONE]"))
                    yield "".join(out)
                    return
                yield "".join(out)
            raise APIError(503, "the model replica ended the stream early, retry the request", type="server_error")
        except Exception as error:  # noqa: BLE001 - reported to the client, never raised
            # Headers are gone already: report in-band, the way OpenAI streams report errors.
            api_error = error if isinstance(error, APIError) else _replica_error(error)
            status = api_error.status
            yield _sse(api_error.body())
        finally:
            stream.cancel()
            self._record(reply.context["model"], route, status, started_at, tokens)

    def _record(self, model: str, route: str, status: int, started_at: float, tokens: int) -> None:
        latency = time.monotonic() - started_at
        self.requests.inc(tags={"model": model, "route": route, "status": str(status)})
        self.latency.observe(latency, tags={"model": model, "route": route})
        if tokens:
            self.completion_tokens.inc(tokens, tags={"model": model})
            self.tokens_per_s.observe(tokens / max(latency, 1e-6), tags={"model": model})
        self.summary.record(status, latency, tokens)
