"""The HF (transformers) generation engine behind Pajama's Serve app, with in-flight batching.

`HFEngine` loads a model that `pajama.models.resolve_source` found (a local directory or an MLflow
registry version) and decodes every request it holds in one batch, one token per forward pass, in
a single long-lived thread. A request that arrives while others are decoding joins them at the
next step: its prompt is run through the model once (prefill) and its key/value cache is
left-padded and appended to the batch's `DynamicCache`; a row that finishes leaves the cache at
once and frees its place. Short requests therefore never wait for the longest one they share a
batch with. (transformers 4.57 has its own continuous batching, `generate_batch`, but it samples
every request with one generation config: no per-request temperature, top-p, seed or stops.)

Rows sample with their own parameters (`pajama.serve.rows.Row`), so one forward pass serves mixed
requests; a row that cannot sample fails alone. Events reach the caller through one
`call_soon_threadsafe` per step for all rows, and a caller takes every event that is ready at once.
The thread records when it last made progress, so a replica's health check can tell a stuck
generation from an idle one (`stalled_s`).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from pajama.kinds import kind as model_kind
from pajama.models import ResolvedModel
from pajama.serve.events import Failed, Finished, TokenLogprob
from pajama.serve.rows import Event, Job, Row, Sampling

# Test hook: a prompt containing this text makes the generation thread hang (health-check tests).
HANG_ON_ENV = "PAJAMA_TEST_HANG_ON"


class RequestError(ValueError):
    """A request the engine cannot serve as asked (too long, bad parameter): a 4xx for the client."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.param = param
        self.code = code


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class _Sink:
    """Where one request's events go: a queue on the event loop that submitted it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rows: int):
        self.loop = loop
        self.rows = rows
        self.queue: asyncio.Queue = asyncio.Queue()


class HFEngine:
    """A causal LM and its tokenizer, decoding all the `Job`s it holds together, step by step."""

    def __init__(
        self,
        resolved: ResolvedModel,
        kind: str = "chat",
        device: torch.device | None = None,
        max_batch_size: int = 16,
        on_admit: Callable[[int], None] | None = None,
    ):
        self.resolved = resolved
        self.style = model_kind(kind).style  # the chat format when the tokenizer has none, and the stops
        self.device = device or pick_device()
        self.max_batch_size = max_batch_size
        self.on_admit = on_admit  # told the batch's row count whenever requests join it (metrics)
        self.tokenizer = AutoTokenizer.from_pretrained(resolved.tokenizer_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(resolved.weights_dir, dtype=dtype, use_safetensors=True)
        self.model.to(self.device).eval()
        self.context_length = int(self.model.config.max_position_embeddings)
        self.vocab_size = int(self.model.config.vocab_size)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids = {i for i in eos_ids if i is not None}
        self._hang_on = os.environ.get(HANG_ON_ENV) or None
        # The decoding batch, touched only by the generation thread.
        self._rows: list[tuple[Row, _Sink]] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # batch x cache length (+ the pending token), 1 = real
        self._next: torch.Tensor | None = None  # each row's last token, not yet in the cache
        # Requests waiting to join, shared with the callers' event loops.
        self._inbox: deque[tuple[list[Row], _Sink]] = deque()
        self._live: set[_Sink] = set()  # requests whose caller still waits, wherever their rows are
        self._wake = threading.Condition()
        self._progress_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="pajama-generate", daemon=True)
        self._thread.start()

    # -- request preparation ---------------------------------------------------------------

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        # The SFT stage stores its template in the tokenizers it exports; others get the kind's.
        template = None if self.tokenizer.chat_template else self.style.chat_template
        return self.tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )

    def encode(self, text: str) -> list[int]:
        """The text's token ids, no special tokens added; a fast tokenizer's Rust encoder is called
        directly (transformers' wrapper costs several times the encoding of a short prompt)."""
        if self.tokenizer.is_fast:
            return self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prepare(
        self,
        *,
        prompt: str | list[int] | None = None,
        messages: list[dict[str, str]] | None = None,
        max_tokens: int | None,
        default_max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: list[str] | tuple[str, ...] = (),
        stream: bool = True,
        logprobs: int | None = None,
        echo: bool = False,
    ) -> Job:
        """Tokenize and check one prompt; raises `RequestError` for what the client must fix."""
        is_chat = messages is not None
        param = "messages" if is_chat else "prompt"
        if isinstance(prompt, list):  # token ids, as lm-evaluation-harness sends them
            input_ids = prompt
            if any(not 0 <= token < self.vocab_size for token in input_ids):
                raise RequestError(f"token ids must be in [0, {self.vocab_size})", param=param)
        else:
            text = self.render_chat(messages) if is_chat else prompt
            input_ids = self.encode(text)
        if not input_ids:
            raise RequestError("the prompt is empty", param=param)
        room = self.context_length - len(input_ids)
        if room < (0 if max_tokens == 0 else 1):
            raise RequestError(
                f"the prompt is {len(input_ids)} tokens; this model's context is {self.context_length} tokens",
                param=param,
                code="context_length_exceeded",
            )
        if max_tokens is not None and max_tokens > room:
            raise RequestError(
                f"prompt ({len(input_ids)} tokens) + max_tokens ({max_tokens}) exceeds this model's "
                f"context of {self.context_length} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        budget = max_tokens if max_tokens is not None else min(default_max_tokens, room)
        defaults = self.style.reply_stops if is_chat else self.style.completion_stops
        stops = tuple(dict.fromkeys([*stop, *defaults]))
        sampling = Sampling(budget, temperature, top_p, max(0, top_k), seed)
        return Job(input_ids, sampling, stops, strip_leading_space=is_chat, stream=stream, logprobs=logprobs, echo=echo)

    def prepare_request(self, request: dict, default_max_tokens: int) -> list[Job]:
        """One job per prompt and per choice (`n`), in the order of the response's choices."""
        request = dict(request)
        n = request.pop("n", 1)
        prompts = request.pop("prompts", None)
        singles = [{"prompt": prompt} for prompt in prompts] if prompts is not None else [{}]
        jobs = []
        for single in singles:
            job = self.prepare(**request, **single, default_max_tokens=default_max_tokens)
            for choice in range(n):
                seed = job.sampling.seed
                # Seeded choices differ from each other and stay reproducible (wrapping within 64 bits).
                sampling = job.sampling if seed is None or choice == 0 else Sampling(
                    job.sampling.max_tokens, job.sampling.temperature, job.sampling.top_p, job.sampling.top_k,
                    (seed + choice) % 2**64,
                )
                jobs.append(Job(job.input_ids, sampling, job.stop, job.strip_leading_space, job.stream,
                                job.logprobs, job.echo, index=len(jobs)))
        return jobs

    # -- generation --------------------------------------------------------------------------

    async def generate(self, jobs: list[Job]) -> AsyncIterator[list[Event]]:
        """Decode `jobs` (they join the running batch); yield the events ready at each wake-up.

        Each job ends with one `Finished` or `Failed` event. Leaving early (the caller is gone)
        cancels the jobs: their rows leave the batch at the next step.
        """
        sink = _Sink(asyncio.get_running_loop(), len(jobs))
        rows = [Row(job, self.tokenizer, self.eos_ids, self.device) for job in jobs]
        with self._wake:
            if not self._live:
                self._progress_at = time.monotonic()  # idle until now: not stalled
            self._live.add(sink)
            self._inbox.append((rows, sink))
            self._wake.notify()
        open_rows = len(jobs)
        try:
            while open_rows:
                events = await sink.queue.get()
                while not sink.queue.empty():
                    events += sink.queue.get_nowait()
                open_rows -= sum(isinstance(event, (Finished, Failed)) for event in events)
                yield events
        finally:
            for job in jobs:
                job.cancelled = True
            with self._wake:
                self._live.discard(sink)

    def stalled_s(self) -> float:
        """Seconds since the generation thread last made progress while it had work; 0 when idle."""
        with self._wake:
            busy = bool(self._live)
        return time.monotonic() - self._progress_at if busy else 0.0

    def abandon(self, message: str) -> None:
        """End every open request with a retryable failure: the generation thread will not."""
        with self._wake:
            live = list(self._live)
        for sink in live:
            failures = [Failed(message, retryable=True, index=index) for index in range(sink.rows)]
            sink.loop.call_soon_threadsafe(sink.queue.put_nowait, failures)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._rows and not self._inbox:
                    self._wake.wait()
                room = self.max_batch_size - len(self._rows)
                joining = []
                # A request's choices join together, so a request never holds a partial batch place.
                while self._inbox and (not joining and not self._rows or len(self._inbox[0][0]) <= room):
                    rows, sink = self._inbox.popleft()
                    room -= len(rows)
                    joining += [(row, sink) for row in rows if not row.job.cancelled]
            with torch.inference_mode():
                if joining:
                    self._prefill(joining)
                if self._rows:
                    self._decode_step()
            self._progress_at = time.monotonic()

    def _prefill(self, joining: list[tuple[Row, _Sink]]) -> None:
        """Run the joining prompts once, emit their first tokens and add them to the batch."""
        if self._hang_on and any(self._hang_on in self.tokenizer.decode(row.job.input_ids) for row, _ in joining):
            threading.Event().wait()  # the test hook: hang here forever
        try:
            batch = self.tokenizer.pad({"input_ids": [row.job.input_ids for row, _ in joining]}, return_tensors="pt")
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            cache = DynamicCache()
            scores_all = any(row.job.echo and row.job.logprobs is not None for row, _ in joining)
            logits = self.model(
                input_ids=ids, attention_mask=_attention_bias(mask, ids.shape[1], self.model.dtype),
                position_ids=_positions(mask), past_key_values=cache, use_cache=True,
                logits_to_keep=0 if scores_all else 1,
            ).logits
            if scores_all:
                for i, (row, _) in enumerate(joining):
                    if row.job.echo and row.job.logprobs is not None:
                        row.job.prompt_logprobs = self._prompt_logprobs(logits[i], mask[i], ids[i], row.job.logprobs)
        except Exception as error:  # noqa: BLE001 - these prompts fail, the batch goes on
            message = f"generation failed: {type(error).__name__}: {error}"
            self._deliver([(sink, Failed(message, index=row.job.index)) for row, sink in joining])
            return
        events = [(sink, row.start()) for row, sink in joining]
        going = [i for i, (row, _) in enumerate(joining) if not row.finished]
        stepped = self._sample([row for row, _ in joining], logits[:, -1])
        events += [(joining[i][1], stepped[i]) for i in going]
        self._deliver(events)
        going = [i for i in going if not joining[i][0].finished]
        if going:
            self._join(cache, mask, ids, [joining[i] for i in going], going)
        if self.on_admit is not None:
            self.on_admit(len(self._rows))

    def _join(self, cache: DynamicCache, mask: torch.Tensor, ids: torch.Tensor, rows, keep: list[int]) -> None:
        keep_t = torch.tensor(keep, device=self.device)
        cache.batch_select_indices(keep_t)
        mask = mask[keep_t]
        next_tokens = torch.tensor([row.token_ids[-1] for row, _ in rows], device=self.device)
        if self._cache is None:
            self._cache, self._mask, self._next = cache, mask, next_tokens
        else:
            length = max(self._mask.shape[1], mask.shape[1])
            for old, new in zip(self._cache.layers, cache.layers):
                old.keys = torch.cat([_left_pad(old.keys, length, 2), _left_pad(new.keys, length, 2)])
                old.values = torch.cat([_left_pad(old.values, length, 2), _left_pad(new.values, length, 2)])
            self._mask = torch.cat([_left_pad(self._mask, length, 1), _left_pad(mask, length, 1)])
            self._next = torch.cat([self._next, next_tokens])
        self._rows += rows

    def _decode_step(self) -> None:
        rows = [row for row, _ in self._rows]
        try:
            mask = torch.cat([self._mask, self._mask.new_ones(len(rows), 1)], dim=1)
            logits = self.model(
                input_ids=self._next[:, None], attention_mask=_attention_bias(mask, 1, self.model.dtype),
                position_ids=_positions(mask)[:, -1:], past_key_values=self._cache, use_cache=True,
            ).logits[:, -1]
        except Exception as error:  # noqa: BLE001 - the batch's rows fail; the engine goes on
            message = f"generation failed: {type(error).__name__}: {error}"
            self._deliver([(sink, Failed(message, index=row.job.index)) for row, sink in self._rows])
            self._rows, self._cache, self._mask, self._next = [], None, None, None
            return
        self._mask = mask
        events = self._sample(rows, logits)
        self._deliver([(sink, event) for (_, sink), event in zip(self._rows, events)])
        keep = [i for i, row in enumerate(rows) if not row.finished]
        if len(keep) == len(rows):
            self._next = torch.tensor([row.token_ids[-1] for row in rows], device=self.device)
            return
        if not keep:
            self._rows, self._cache, self._mask, self._next = [], None, None, None
            return
        keep_t = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(keep_t)
        self._rows = [self._rows[i] for i in keep]
        self._mask = self._mask[keep_t]
        self._next = torch.tensor([row.token_ids[-1] for row, _ in self._rows], device=self.device)
        # Columns that only the rows that left were using are dropped from the cache.
        start = int(self._mask.any(dim=0).nonzero()[0])
        if start:
            self._mask = self._mask[:, start:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> list[Event | None]:
        """Each row's next token from its logits (rows x vocab): advance it, return its event."""
        chosen = logits.argmax(dim=-1).tolist()
        logprobs = None
        if any(row.job.logprobs is not None for row in rows):
            logprobs = torch.log_softmax(logits.float(), dim=-1)
        events = []
        for i, row in enumerate(rows):
            if row.finished:
                events.append(None)
                continue
            token = row.sample(logits[i : i + 1])
            token = chosen[i] if token is None else token
            entry = None
            if logprobs is not None and row.job.logprobs is not None and token not in self.eos_ids:
                entry = self._token_logprob(logprobs[i], token, row.job.logprobs)
            events.append(row.advance(token, entry))
        return events

    def _token_logprob(self, logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
        best = torch.topk(logprobs, top) if top else None
        ranked = () if best is None else tuple(
            (self.tokenizer.decode([i]), v) for i, v in zip(best.indices.tolist(), best.values.tolist())
        )
        return TokenLogprob(self.tokenizer.decode([token]), float(logprobs[token]), ranked)

    def _prompt_logprobs(self, logits: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor, top: int):
        """Each prompt token's logprob given the tokens before it (the first has none)."""
        start = int(mask.nonzero()[0])
        tokens = ids[start:].tolist()
        logprobs = torch.log_softmax(logits[start:-1].float(), dim=-1)
        entries = [TokenLogprob(self.tokenizer.decode([tokens[0]]), None, ())]
        entries += [self._token_logprob(logprobs[i], token, top) for i, token in enumerate(tokens[1:])]
        return tuple(entries)

    def _deliver(self, events: list[tuple[_Sink, Event | None]]) -> None:
        """Hand this step's events to their callers: one wake-up per event loop, not per row."""
        by_loop: dict[asyncio.AbstractEventLoop, dict[_Sink, list[Event]]] = {}
        for sink, event in events:
            if event is not None:
                by_loop.setdefault(sink.loop, {}).setdefault(sink, []).append(event)
        for loop, sinks in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, sinks)
            except RuntimeError:  # that caller's event loop is closed: nobody is listening
                pass


def _put_all(sinks: dict[_Sink, list[Event]]) -> None:
    for sink, events in sinks.items():
        sink.queue.put_nowait(events)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: each row's real tokens count from 0."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _attention_bias(mask: torch.Tensor, queries: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive 4D mask (rows x 1 x queries x length) for the last `queries` positions of
    left-padded rows: each sees the real positions up to itself, a padding position only itself
    (never nothing, which would make NaNs). Built here because transformers builds it per step
    with vmap once rows are padded, which costs more than the tiny model's forward pass."""
    length = mask.shape[1]
    keys = torch.arange(length, device=mask.device)
    query_positions = keys[length - queries :, None]
    allowed = (keys <= query_positions) & mask.bool()[:, None, :]
    allowed |= keys == query_positions
    bias = torch.zeros(allowed.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if not missing:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
