"""vLLM through Ray Serve LLM, behind Pajama's ingress (the Serve config's `engine: vllm`).

Each model becomes a Ray Serve LLM `LLMServer` deployment (vLLM: continuous batching, paged KV
cache, CUDA graphs) built from the same options as the HF engine's: replicas, autoscaling, health
checks, `max_batch_size` as vLLM's `max_num_seqs`, no remote code (`llm_config`). Pajama's ingress
stays in front (`VLLMModel`): the API key, request limits and validation, provenance headers,
metrics, `/v1/models` and the playground are the same for both engines; the validated request goes
to the server's `chat` / `completions` and vLLM's OpenAI responses come back as they are.

Building the configs needs only Ray (CI builds them from pipelines/serve.yaml and the gpu overlay's
serve config); the deployments and the request types need vLLM, which the GPU serving image has
(Dockerfile.serve-gpu). The public `ray.serve.llm` module needs vLLM even to import, so `LLMConfig`
is taken from where Ray defines it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from pydantic import BaseModel
from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
from ray.serve.handle import DeploymentHandle

from pajama.config import ReplicaOptions
from pajama.models import ResolvedModel
from pajama.serve.options import deployment_options


def llm_config(name: str, resolved: ResolvedModel, options: ReplicaOptions) -> LLMConfig:
    """The Ray Serve LLM config of one model: its replicas as `deployment_options` makes them for
    the HF engine (vLLM places its own GPU workers, so no actor resources)."""
    deployment = deployment_options(name, options)
    for placed_by_ray_serve_llm in ("name", "ray_actor_options"):
        deployment.pop(placed_by_ray_serve_llm)
    return LLMConfig(
        # Resolved where the app is built: the directory must be visible to the vLLM replicas.
        model_loading_config={"model_id": name, "model_source": str(resolved.weights_dir)},
        engine_kwargs={
            "tokenizer": str(resolved.tokenizer_dir),
            "max_num_seqs": options.max_batch_size,
            "trust_remote_code": False,
        },
        deployment_config=deployment,
    )


def build_deployment(config: LLMConfig):
    """The `LLMServer` deployment of one model (needs vLLM)."""
    from ray.serve.llm import build_llm_deployment

    return build_llm_deployment(config, name_prefix="vllm-")


class VLLMModel:
    """A model served by vLLM in its `LLMServer` deployment, as Pajama's ingress calls it."""

    openai_responses = True  # the ingress passes its responses through (see OpenAIIngress)

    def __init__(self, handle: DeploymentHandle, info: dict):
        self.handle = handle.options(stream=True)
        self._info = info  # kind, version, run_id: /v1/models and the provenance headers

    async def info(self) -> dict:
        return self._info

    def check_health(self) -> None:
        pass  # its own replicas report their health

    async def respond(self, body: BaseModel, is_chat: bool) -> tuple[dict | None, AsyncIterator[str] | None, int]:
        """Send the validated request; return (the whole response, or None and the SSE stream;
        the HTTP status). An error vLLM reports before streaming is the response, with its status."""
        from ray.llm._internal.serve.core.configs.openai_api_models import (
            ChatCompletionRequest,
            CompletionRequest,
            ErrorResponse,
        )

        request_type = ChatCompletionRequest if is_chat else CompletionRequest
        request = request_type.model_validate(body.model_dump(exclude_unset=True))
        responses = getattr(self.handle, "chat" if is_chat else "completions").remote(request, None)
        first = await responses.__anext__()
        head = first[0] if isinstance(first, list) and first else first
        if isinstance(head, ErrorResponse):
            responses.cancel()
            return head.model_dump(), None, head.error.code
        if not isinstance(first, list):  # a whole (non-streaming) response
            responses.cancel()
            return first.model_dump(), None, 200
        return None, _sse_stream(first, responses), 200


async def _sse_stream(first: list, rest) -> AsyncIterator[str]:
    """vLLM's batches of server-sent events as they come, ending with [DONE] exactly once."""
    done = False
    try:
        batch = first
        while True:
            packet = "".join(_sse(item) for item in batch)
            done = done or packet.rstrip().endswith("data: [DONE]")
            yield packet
            try:
                batch = await rest.__anext__()
            except StopAsyncIteration:
                break
            batch = batch if isinstance(batch, list) else [batch]
        if not done:
            yield "data: [DONE]\n\n"
    finally:
        rest.cancel()


def _sse(item) -> str:
    """One server-sent event: vLLM's streams hold ready `data: ...` strings, or response objects
    (an ErrorResponse mid-stream: reported in-band, as OpenAI streams report errors)."""
    if isinstance(item, str):
        return item if item.startswith("data: ") else f"data: {item}\n\n"
    return f"data: {json.dumps(item.model_dump())}\n\n"
