"""One request's row in the HF engine's decoding batch: its sampling, stops, text and logprobs.

A `Job` is a tokenized request choice; a `Row` is that job while it decodes. Each row samples with
its own temperature/top-k/top-p and seed, so rows with different parameters share every forward
pass. A row whose sampling fails (a parameter the ingress let through that torch cannot execute)
ends with a `Failed` event of its own while the other rows go on. Stop sequences are matched
incrementally (`StopMatcher`): each generated character is read once per stop sequence, so the
cost is linear in the new text, whatever the length of the stop sequences. Text is decoded
incrementally too (`tokenizers`' DecodeStream: each token is decoded once with a few tokens of
context, not the whole output at every step, which made a row's cost per token grow with its
length); the finished text is the tokenizer's decode of all the tokens, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tokenizers.decoders import DecodeStream
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from pajama.serve.events import Delta, Failed, Finished, TokenLogprob

# Temperatures below this are served greedily, as temperature 0: dividing logits by a smaller one
# overflows to inf (NaN probabilities), and at 1e-2 sampling is already all but greedy.
MIN_TEMPERATURE = 1e-2

Event = Delta | Finished | Failed


@dataclass(frozen=True)
class Sampling:
    max_tokens: int  # 0: score the prompt only (echo)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None


@dataclass
class Job:
    """One tokenized choice of a request. `cancelled` is set when the client goes away."""

    input_ids: list[int]
    sampling: Sampling
    stop: tuple[str, ...]
    strip_leading_space: bool
    stream: bool = True  # False: no Deltas, the whole text comes with Finished
    logprobs: int | None = None  # None: no logprobs; k: each token's logprob and the k most likely
    echo: bool = False  # the prompt (and its logprobs) comes first
    cancelled: bool = False
    index: int = 0  # which choice of its request
    # Filled by the engine: the prompt's per-token logprobs, when echo and logprobs are asked for.
    prompt_logprobs: tuple[TokenLogprob, ...] = field(default=(), repr=False)


class Row:
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
        self.stops = StopMatcher(job.stop)
        self.logprobs: list[TokenLogprob] = []  # not yet emitted
        self.prefix = ""  # the echoed prompt, until the first event carries it
        self.warpers = []
        self.generator = None
        # Incremental decoding needs a fast tokenizer and no whole-text clean-up after decoding.
        incremental = hasattr(tokenizer, "backend_tokenizer") and not getattr(tokenizer, "clean_up_tokenization_spaces", False)
        self.stream = DecodeStream(skip_special_tokens=True) if incremental else None
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

    def start(self) -> Event | None:
        """The prompt is in: echo it, or end a prompt-only (max_tokens 0) row."""
        if self.job.echo:
            self.prefix = self.tokenizer.decode(self.job.input_ids, skip_special_tokens=False)
            self.logprobs.extend(self.job.prompt_logprobs)
        if self.error is not None:
            self.finished = True
            return Failed(self.error, index=self.job.index)
        if self.job.sampling.max_tokens == 0:
            return self._finish("length")
        return None

    def _decode(self, token: int) -> tuple[str, int]:
        """The text so far with `token` added, and how much of it later tokens cannot change."""
        if self.stream is None:
            text = self._full_text()
            # Text up to an incomplete UTF-8 character at the end will not change with later tokens.
            return text, len(text.rstrip("\ufffd"))
        # DecodeStream holds back an incomplete character until the tokens that complete it arrive.
        chunk = self.stream.step(self.tokenizer.backend_tokenizer, token) or ""
        if self.job.strip_leading_space and not self.text:
            chunk = chunk.lstrip()
        text = self.text + chunk
        return text, len(text)

    def _full_text(self) -> str:
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        return text.lstrip() if self.job.strip_leading_space else text

    def sample(self, scores: torch.FloatTensor) -> int | None:
        """This row's next token from its scores (1 x vocab), or None to take the greedy choice."""
        if self.finished or self.error is not None or not self.warpers:
            return None
        try:
            logits = scores.float()
            for warper in self.warpers:
                logits = warper(None, logits)
            probs = torch.softmax(logits, dim=-1)
            return int(torch.multinomial(probs, 1, generator=self.generator)[0, 0])
        except Exception as error:  # noqa: BLE001 - this row fails, not the batch
            self.error = f"sampling failed: {type(error).__name__}: {error}"
            return None

    def advance(self, token: int, logprob: TokenLogprob | None = None) -> Event | None:
        """Take one generated token; return what the client should see now, if anything."""
        if self.finished:
            return None
        if self.error is not None:
            self.finished = True
            return Failed(self.error, index=self.job.index)
        if self.job.cancelled:
            self.finished = True
            return None
        self.generated += 1
        if token in self.eos_ids:
            return self._finish("stop", whole=True)
        self.token_ids.append(token)
        if logprob is not None:
            self.logprobs.append(logprob)
        text, complete = self._decode(token)
        stop_at = self.stops.feed(text, complete)
        if stop_at is not None:
            self.text = text[:stop_at]
            return self._finish("stop")
        self.text = text
        if self.generated >= self.job.sampling.max_tokens:
            return self._finish("length", whole=True)
        if not self.job.stream:
            return None
        # Hold back an incomplete UTF-8 character and anything that may be the start of a stop sequence.
        safe = complete - self.stops.partial()
        if safe <= self.sent:
            return None
        delta, self.sent = text[self.sent:safe], safe
        return Delta(self._take_prefix() + delta, self.job.index, self._take_logprobs())

    def _finish(self, reason: str, whole: bool = False) -> Finished:
        """`whole`: the output ends with the last token (not at a stop sequence), so its text is the
        decode of all its tokens, an incomplete character held back by the stream included."""
        self.finished = True
        if whole and self.stream is not None and self.token_ids:
            self.text = self._full_text()
        text = self._take_prefix() + self.text[self.sent:]
        return Finished(text, reason, self.generated, self.job.index, self._take_logprobs())

    def _take_prefix(self) -> str:
        prefix, self.prefix = self.prefix, ""
        return prefix

    def _take_logprobs(self) -> tuple[TokenLogprob, ...]:
        taken, self.logprobs = tuple(self.logprobs), []
        return taken


class StopMatcher:
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
