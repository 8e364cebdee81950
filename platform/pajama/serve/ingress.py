"""The HTTP ingress of Pajama's Serve app: the OpenAI API in front of the model deployments.

`OpenAIIngress` authenticates, bounds and validates each request before any model sees it, shapes
responses and server-sent events the way OpenAI's clients parse them, adds provenance headers,
records metrics, and serves the playground page. Its rules for what a client gets back:

- every mistake of the client is a 4xx naming it (413 for a body over `max_request_bytes`, 415
  for a JSON endpoint called without `Content-Type: application/json`, which also keeps web pages
  from posting to a keyless local server with a "simple" cross-site request);
- 503 only where a retry can help (a replica died or is overloaded), 500 for anything else;
- an error of one request is that request's alone, in-band once a stream has started;
- metric labels take only bounded values: a model name the app does not serve is "unknown".
"""

import hmac
import importlib.resources
import json
import logging
import os
import statistics
import time

import ray
from fastapi import FastAPI, Request
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
from pajama.serve.openai_schema import APIError

logger = logging.getLogger("ray.serve")

PLAYGROUND_HTML = "static/playground.html"
LATENCY_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
TOKENS_PER_S_BUCKETS = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000]
UNKNOWN_MODEL = "unknown"  # the metric label of every request that names no served model
# Failures a retry can get past: the replica died or is restarting, or the deployment is overloaded.
RETRYABLE = (
    ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
    BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError,
)


api = FastAPI(title="Pajama OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)


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


def _replica_error(error: Exception) -> APIError:
    if isinstance(error, RETRYABLE):
        logger.warning("model replica unavailable during a request: %s", type(error).__name__)
        return APIError(503, f"the model replica is unavailable, retry the request ({type(error).__name__})", type="server_error")
    logger.error("request failed", exc_info=error)
    return APIError(500, f"internal error: {type(error).__name__}", type="server_error")


def _no_json_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


async def read_json_body(request: Request, max_bytes: int) -> dict:
    """The request's JSON object, read only as far as `max_bytes` allow."""
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
    async for chunk in request.stream():  # chunked bodies declare no length: count while reading
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    try:
        payload = json.loads(body, parse_constant=_no_json_constant)
        # A \ud800 escape decodes to a lone surrogate, which no tokenizer (nor UTF-8) can take.
        json.dumps(payload, ensure_ascii=False).encode()
    except (ValueError, UnicodeError, RecursionError) as error:
        raise APIError(400, f"The request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return payload


@serve.deployment
@serve.ingress(api)
class OpenAIIngress:
    def __init__(self, models: dict[str, DeploymentHandle], kinds: dict[str, str], limits: dict,
                 api_key_env: str, log_interval_s: float):
        keep_serve_replica_on_node_ip()
        self.models = models
        self.kinds = kinds
        self.max_request_bytes = limits["max_request_bytes"]
        self.max_prompt_chars = limits["max_prompt_chars"]
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
        payload = await read_json_body(request, self.max_request_bytes)
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
            if isinstance(first, Failed):
                raise APIError(500, first.message, type="server_error")
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
