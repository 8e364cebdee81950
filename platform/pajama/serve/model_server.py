"""The model deployment: one model per replica, concurrent requests batched into one `generate`.

A replica loads the model (a local HF directory or an MLflow registry version) and batches
concurrent requests with `@serve.batch`; the engine runs one `generate` call per batch and merges
batches that queued up while the model was busy (see `pajama.serve.engine`). A request is prepared
(chat template, tokenizer) in a worker thread, so a long prompt never stalls the replica's event
loop, and whatever goes wrong with one request is reported on that request's stream alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from ray import serve
from ray.serve.metrics import Histogram

from pajama.cluster import keep_serve_replica_on_node_ip
from pajama.serve.events import Delta, Failed, Finished, Rejected, Started
from pajama.serve.options import SERVE_CONCURRENT_BATCHES

logger = logging.getLogger("ray.serve")


@serve.deployment
class ModelServer:
    """One model, loaded once per replica; concurrent requests are batched into one `generate`."""

    def __init__(self, spec: dict, tracking_uri: str | None, cache_dir: str | None, options: dict, default_max_tokens: int):
        keep_serve_replica_on_node_ip()
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
        """Stream one request: Started (or Rejected, or Failed), then Deltas and Finished (or Failed)."""
        from jinja2 import TemplateError

        from pajama.serve.engine import RequestError

        try:
            job = await asyncio.to_thread(self.engine.prepare, **request, default_max_tokens=self.default_max_tokens)
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
            ended = [isinstance(event, (Finished, Failed)) for event in events]
            if any(ended):
                # Serve's end-of-stream sentinel: an ended caller's stream ends now, not with the batch.
                yield [StopIteration if done else None for done in ended]
