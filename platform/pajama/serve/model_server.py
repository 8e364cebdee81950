"""The model deployment: one model per replica, every request decoding in one in-flight batch.

A replica loads the model (a local HF directory or an MLflow registry version) into an `HFEngine`,
which decodes all the requests it holds together and lets new ones join at the next step (see
`pajama.serve.engine`); Serve's own batching would only add a wait. A request with a long prompt is
prepared (chat template, tokenizer) in a worker thread, so it never stalls the replica's event loop,
and whatever goes wrong with one request is reported on that request's stream alone. Events go
back to the ingress in lists, everything that was ready at once, not one message per token.

`check_health` fails while the generation thread has had work but no progress for
`stall_timeout_s`, so Serve replaces a replica whose generation hangs instead of letting every
request routed to it wait forever; the requests it holds fail at once as retryable (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from ray import serve
from ray.serve.metrics import Histogram

from pajama.cluster import keep_serve_replica_on_node_ip
from pajama.serve.events import Failed, Rejected, Started

logger = logging.getLogger("ray.serve")


# Prompts up to this many characters are tokenized on the event loop: that takes less time than
# handing the request to a worker thread and back. Longer ones go to a thread, never stalling the loop.
INLINE_PREPARE_CHARS = 4096


def _prompt_chars(request: dict) -> int:
    """The characters of an engine request's prompt texts (token-id prompts need no tokenizing)."""
    messages = request.get("messages") or ()
    prompts = [prompt for prompt in request.get("prompts") or () if isinstance(prompt, str)]
    return sum(len(message["content"]) for message in messages) + sum(map(len, prompts))


@serve.deployment
class ModelServer:
    """One model, loaded once per replica; concurrent requests decode together."""

    def __init__(self, spec: dict, tracking_uri: str | None, storage_uri: str | None, cache_dir: str | None,
                 options: dict, default_max_tokens: int):
        keep_serve_replica_on_node_ip()
        # torch/transformers are imported here, not at module level, so the ingress starts fast.
        from pajama.models import resolve_source
        from pajama.serve.engine import HFEngine

        self.name = spec["name"]
        self.kind = spec["kind"]
        batch_sizes = Histogram(
            "pajama_serve_generate_batch_size",
            description="Rows decoding together, observed whenever requests join the batch.",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
            tag_keys=("model",),
        )
        batch_sizes.set_default_tags({"model": self.name})
        resolved = resolve_source(spec["source"], tracking_uri, cache_dir, storage_uri)
        self.engine = HFEngine(
            resolved, kind=self.kind, max_batch_size=options["max_batch_size"], on_admit=batch_sizes.observe
        )
        self.default_max_tokens = default_max_tokens
        self.stall_timeout_s = options["stall_timeout_s"]
        self.stuck: str | None = None  # why this replica's generation is stuck, once it is
        logger.info(
            "model %s (%s) loaded from %s: version %s, run %s, device %s",
            self.name, self.kind, spec["source"], resolved.version, resolved.run_id, self.engine.device,
        )

    def check_health(self) -> None:
        stalled = self.engine.stalled_s()
        if self.stuck is None and stalled > self.stall_timeout_s:
            self.stuck = f"generation is stuck: no progress for {stalled:.0f} s with requests waiting"
            logger.error("model %s: %s; failing its requests and reporting the replica unhealthy", self.name, self.stuck)
        if self.stuck is not None:
            # Its callers get a 503 now rather than whenever Serve stops this replica; a stuck
            # thread stays stuck, so the check keeps failing until Serve replaces the replica.
            self.engine.abandon(self._retry_message())
            raise RuntimeError(self.stuck)

    def _retry_message(self) -> str:
        return f"the model replica is being replaced ({self.stuck}), retry the request"

    def info(self) -> dict:
        return {
            "kind": self.kind,
            "version": self.engine.resolved.version,
            "run_id": self.engine.resolved.run_id,
            "context_length": self.engine.context_length,
        }

    async def generate(self, request: dict) -> AsyncIterator[Started | Rejected | Failed | list]:
        """Stream one request: Started (or Rejected, or Failed), then event lists (or Failed)."""
        from jinja2 import TemplateError

        from pajama.serve.engine import RequestError

        if self.stuck is not None:
            yield Failed(self._retry_message(), retryable=True)
            return
        try:
            if _prompt_chars(request) <= INLINE_PREPARE_CHARS:
                jobs = self.engine.prepare_request(request, self.default_max_tokens)
            else:
                jobs = await asyncio.to_thread(self.engine.prepare_request, request, self.default_max_tokens)
        except RequestError as error:
            yield Rejected(str(error), error.param, error.code)
            return
        except TemplateError as error:  # the model's chat template refused these messages
            yield Rejected(f"chat template: {error}", "messages", "invalid_messages")
            return
        except Exception as error:  # this request's own fault or a bug: never retryable, never the batch's
            logger.exception("preparing a request failed for model %s", self.name)
            yield Failed(f"preparing the request failed: {type(error).__name__}")
            return
        resolved = self.engine.resolved
        # A prompt repeated for n choices counts once, as OpenAI counts it.
        prompt_tokens = sum(len(job.input_ids) for job in jobs[:: request.get("n", 1)])
        yield Started(prompt_tokens, resolved.version, resolved.run_id)
        try:
            # aclosing: leaving early cancels the jobs at once, not whenever the generator is collected.
            async with contextlib.aclosing(self.engine.generate(jobs)) as stream:
                async for events in stream:
                    failed = next((event for event in events if isinstance(event, Failed)), None)
                    if failed is not None:  # one failed choice fails the request (and only it)
                        yield failed
                        return
                    yield events
        except Exception as error:  # a broken request must not take the replica down
            logger.exception("generation failed for model %s", self.name)
            yield Failed(f"generation failed: {type(error).__name__}: {error}")

    async def complete(self, request: dict) -> list:
        """A whole non-streaming request in one call: cheaper than a streaming handle call."""
        return [item async for item in self.generate({**request, "stream": False})]
