"""The HF (transformers) generation engine behind Pajama's Serve app.

`HFEngine` loads a model that `pajama.models.resolve_source` found (a local directory or an MLflow
registry version) and serves a batch of requests with ONE `model.generate` call: prompts are padded on the left,
and per-request sampling parameters are applied row by row (see `_PerRowSampler`) instead of grouping
the batch by parameters. Grouping would split a batch of 16 mixed requests into several sequential
`generate` calls and lose most of the batching gain; per-row sampling costs a small Python loop per
step, which is negligible next to the forward pass. Each row also has its own token budget, stop
sequences and seed. Tokens reach the caller through a transformers streamer, one event list per step.

A row whose sampling fails (a parameter the ingress let through that torch cannot execute) ends
with a `Failed` event of its own while the other rows of the batch go on. Stop sequences are
matched incrementally (`_StopMatcher`): each generated character is read once per stop sequence,
so the cost is linear in the new text, whatever the length of the stop sequences.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer

from pajama.kinds import kind as model_kind
from pajama.models import ResolvedModel
from pajama.serve.events import Delta, Failed, Finished


# Temperatures below this are served greedily, as temperature 0: dividing logits by a smaller one
# overflows to inf (NaN probabilities), and at 1e-2 sampling is already all but greedy.
MIN_TEMPERATURE = 1e-2


class RequestError(ValueError):
    """A request the engine cannot serve as asked (too long, bad parameter): a 4xx for the client."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.param = param
        self.code = code


# ----------------------------------------------------------------------------------------------
# Requests and the events a generation stream yields


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None


@dataclass
class Job:
    """One tokenized request inside the engine. `cancelled` is set when the client goes away."""

    input_ids: list[int]
    sampling: Sampling
    stop: tuple[str, ...]
    strip_leading_space: bool
    stream: bool = True  # False: no Deltas, the whole text comes with Finished
    cancelled: bool = False


Event = Delta | Finished | Failed


# ----------------------------------------------------------------------------------------------
# Per-row decoding state shared by the sampler, the streamer and the stopping criterion


class _Row:
    def __init__(self, job: Job, tokenizer, eos_ids: set[int], device: torch.device):
        self.job = job
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.token_ids: list[int] = []
        self.generated = 0
        self.text = ""
        self.sent = 0  # characters of self.text already emitted
        self.finished = False
        self.error: str | None = None  # set when this row cannot go on; reported by the next advance
        self.stops = _StopMatcher(job.stop)
        self.warpers = []
        self.generator = None
        try:
            self._setup_sampling(job.sampling, device)
        except Exception as error:  # noqa: BLE001 - this row fails, not the batch
            self.error = f"invalid sampling parameters: {type(error).__name__}: {error}"

    def _setup_sampling(self, sampling: Sampling, device: torch.device) -> None:
        if sampling.temperature < MIN_TEMPERATURE:
            return  # greedy
        self.warpers.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k > 0:
            self.warpers.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(sampling.top_p))
        self.generator = torch.Generator(device=device)
        if sampling.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(sampling.seed)

    def sample(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> int | None:
        """This row's next token from its scores (1 x vocab), or None to take the greedy choice."""
        if self.finished or self.error is not None or not self.warpers:
            return None
        try:
            logits = scores.float()
            for warper in self.warpers:
                logits = warper(input_ids, logits)
            probs = torch.softmax(logits, dim=-1)
            return int(torch.multinomial(probs, 1, generator=self.generator)[0, 0])
        except Exception as error:  # noqa: BLE001 - this row fails, not the batch
            self.error = f"sampling failed: {type(error).__name__}: {error}"
            return None

    def advance(self, token: int) -> Event | None:
        """Take one generated token; return what the client should see now, if anything."""
        if self.finished:
            return None
        if self.error is not None:
            self.finished = True
            return Failed(self.error)
        if self.job.cancelled:
            self.finished = True
            return None
        self.generated += 1
        if token in self.eos_ids:
            return self._finish("stop")
        self.token_ids.append(token)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if self.job.strip_leading_space:
            text = text.lstrip()
        # Text up to an incomplete UTF-8 character at the end will not change with later tokens.
        complete = len(text.rstrip("\ufffd"))
        stop_at = self.stops.feed(text, complete)
        if stop_at is not None:
            self.text = text[:stop_at]
            return self._finish("stop")
        self.text = text
        if self.generated >= self.job.sampling.max_tokens:
            return self._finish("length")
        if not self.job.stream:
            return None
        # Hold back an incomplete UTF-8 character and anything that may be the start of a stop sequence.
        safe = complete - self.stops.partial()
        if safe <= self.sent:
            return None
        delta, self.sent = text[self.sent:safe], safe
        return Delta(delta)

    def _finish(self, reason: str) -> Finished:
        self.finished = True
        return Finished(self.text[self.sent:], reason, self.generated)


class _StopMatcher:
    """The first stop sequence in a growing text, found by reading each new character once.

    One Knuth-Morris-Pratt automaton per stop sequence: its state is the longest prefix of the stop
    that the text read so far ends with, which is also what streaming must hold back.
    """

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.fallbacks = [_prefix_function(stop) for stop in stops]
        self.states = [0] * len(stops)
        self.read = 0  # characters of the text fed so far

    def feed(self, text: str, end: int) -> int | None:
        """Read text[read:end]; return where the stop completed first starts, if one did."""
        for position in range(self.read, end):
            char = text[position]
            starts = []
            for i, stop in enumerate(self.stops):
                state, fallback = self.states[i], self.fallbacks[i]
                while state and stop[state] != char:
                    state = fallback[state - 1]
                if stop[state] == char:
                    state += 1
                if state == len(stop):
                    starts.append(position + 1 - state)
                    state = fallback[state - 1]
                self.states[i] = state
            if starts:
                return min(starts)
        self.read = max(self.read, end)
        return None

    def partial(self) -> int:
        """How many trailing characters of the text read may begin a stop sequence."""
        return max(self.states, default=0)


def _prefix_function(pattern: str) -> list[int]:
    """For each prefix of `pattern`, the length of its longest proper prefix that is also its suffix."""
    fallback = [0] * len(pattern)
    state = 0
    for i in range(1, len(pattern)):
        while state and pattern[i] != pattern[state]:
            state = fallback[state - 1]
        if pattern[i] == pattern[state]:
            state += 1
        fallback[i] = state
    return fallback


class _PerRowSampler(LogitsProcessor):
    """Pick each row's next token with its own temperature/top-k/top-p/seed, then force it.

    Returns scores that are -inf everywhere except the chosen token, so `generate` runs in greedy
    mode and simply takes our choice: one `generate` call serves rows with different parameters.
    """

    def __init__(self, rows: list[_Row]):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = scores.argmax(dim=-1)  # the greedy rows' choice (generate pads finished rows itself)
        for i, row in enumerate(self.rows):
            token = row.sample(input_ids[i : i + 1], scores[i : i + 1])
            if token is not None:
                chosen[i] = token
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, chosen[:, None], 0.0)
        return forced


class _RowsFinished(StoppingCriteria):
    """Per-row stop: stop sequence, token budget or cancellation, as decided by the streamer."""

    def __init__(self, rows: list[_Row]):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.tensor([row.finished for row in self.rows], dtype=torch.bool, device=input_ids.device)


class _StepStreamer(BaseStreamer):
    """Receives each step's tokens from `generate` and emits one event list (one entry per row)."""

    def __init__(self, rows: list[_Row], emit: Callable[[list[Event | None]], None]):
        self.rows = rows
        self.emit = emit
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first streams the prompt itself
            self.prompt_seen = True
            return
        events = [row.advance(token) for row, token in zip(self.rows, value.reshape(-1).tolist())]
        if any(event is not None for event in events):
            self.emit(events)

    def end(self) -> None:
        # Rows end in put() (each budget is <= max_new_tokens); should generate stop early anyway,
        # close the open rows so that no caller waits for a Finished that never comes.
        leftovers = [None if row.finished else row._finish("length") for row in self.rows]
        if any(event is not None for event in leftovers):
            self.emit(leftovers)


# ----------------------------------------------------------------------------------------------
# The engine


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class HFEngine:
    """A causal LM and its tokenizer, serving batches of `Job`s with transformers `generate`."""

    def __init__(
        self,
        resolved: ResolvedModel,
        kind: str = "chat",
        device: torch.device | None = None,
        max_batch_size: int = 16,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.resolved = resolved
        self.style = model_kind(kind).style  # the chat format when the tokenizer has none, and the stops
        self.device = device or pick_device()
        self.max_batch_size = max_batch_size
        self.on_batch = on_batch  # told the row count of each generate call (metrics)
        self._waiting: deque[_Group] = deque()
        self._scheduler: asyncio.Task | None = None
        # One long-lived thread runs every generate call: they are sequential anyway, and CUDA
        # libraries set up per-thread state (cuBLAS handles, ...) that a fresh thread pays for again.
        self._generate_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pajama-generate")
        self.tokenizer = AutoTokenizer.from_pretrained(resolved.tokenizer_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(resolved.weights_dir, dtype=dtype, use_safetensors=True)
        self.model.to(self.device).eval()
        self.context_length = int(self.model.config.max_position_embeddings)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids = {i for i in eos_ids if i is not None}

    # -- request preparation ---------------------------------------------------------------

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        # The SFT stage stores its template in the tokenizers it exports; others get the kind's.
        template = None if self.tokenizer.chat_template else self.style.chat_template
        return self.tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )

    def prepare(
        self,
        *,
        prompt: str | None = None,
        messages: list[dict[str, str]] | None = None,
        max_tokens: int | None,
        default_max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: list[str] | tuple[str, ...] = (),
        stream: bool = True,
    ) -> Job:
        """Tokenize and check one request; raises `RequestError` for what the client must fix."""
        is_chat = messages is not None
        text = self.render_chat(messages) if is_chat else prompt
        input_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not input_ids:
            raise RequestError("the prompt is empty", param="prompt")
        room = self.context_length - len(input_ids)
        if room < 1:
            raise RequestError(
                f"the prompt is {len(input_ids)} tokens; this model's context is {self.context_length} tokens",
                param="messages" if is_chat else "prompt",
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
        return Job(input_ids, sampling, stops, strip_leading_space=is_chat, stream=stream)

    # -- generation --------------------------------------------------------------------------

    async def generate_stream(self, jobs: list[Job]) -> AsyncIterator[list[Event | None]]:
        """Generate for `jobs`; yield one event list (an entry per job) per step that has news.

        Groups of jobs that arrive while the model is busy wait and are merged into the next
        `generate` call, up to `max_batch_size` rows. Serve's batcher forms its batches eagerly
        (it does not wait for the running batch to finish), so without this merge a busy replica
        would run many small batches back to back and lose most of the batching gain.
        """
        group = _Group(jobs)
        self._waiting.append(group)
        if self._scheduler is None or self._scheduler.done():
            self._scheduler = asyncio.create_task(self._run_waiting_groups())
        while (events := await group.events.get()) is not _DONE:
            yield events
        if group.error is not None:
            raise group.error

    async def _run_waiting_groups(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            groups = [self._waiting.popleft()]
            rows = len(groups[0].jobs)
            while self._waiting and rows + len(self._waiting[0].jobs) <= self.max_batch_size:
                rows += len(self._waiting[0].jobs)
                groups.append(self._waiting.popleft())
            if self.on_batch is not None:
                self.on_batch(rows)
            try:
                # generate blocks: run it in a thread so the replica keeps accepting requests.
                await loop.run_in_executor(self._generate_thread, self._generate_blocking, groups, loop)
            except Exception as error:  # noqa: BLE001 - handed to every caller of this batch
                for group in groups:
                    group.error = error
            finally:
                for group in groups:
                    group.events.put_nowait(_DONE)

    def _generate_blocking(self, groups: list[_Group], loop: asyncio.AbstractEventLoop) -> None:
        jobs = [job for group in groups for job in group.jobs]
        rows = [_Row(job, self.tokenizer, self.eos_ids, self.device) for job in jobs]

        def emit(events: list[Event | None]) -> None:
            start = 0
            for group in groups:
                part = events[start : start + len(group.jobs)]
                start += len(group.jobs)
                if any(event is not None for event in part):
                    loop.call_soon_threadsafe(group.events.put_nowait, part)

        batch = self.tokenizer.pad({"input_ids": [job.input_ids for job in jobs]}, return_tensors="pt")
        config = GenerationConfig(
            max_new_tokens=max(job.sampling.max_tokens for job in jobs),
            do_sample=False,
            num_beams=1,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.model.generation_config.bos_token_id,
        )
        with torch.inference_mode():
            self.model.generate(
                input_ids=batch["input_ids"].to(self.device),
                attention_mask=batch["attention_mask"].to(self.device),
                generation_config=config,
                logits_processor=LogitsProcessorList([_PerRowSampler(rows)]),
                stopping_criteria=StoppingCriteriaList([_RowsFinished(rows)]),
                streamer=_StepStreamer(rows, emit),
            )


_DONE = object()


class _Group:
    """Jobs that arrived together (one Serve batch), with the queue their events go to."""

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs
        self.events: asyncio.Queue = asyncio.Queue()
        self.error: Exception | None = None
