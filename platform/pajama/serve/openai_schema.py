"""The OpenAI wire format Pajama serves: request validation and response/chunk shapes.

Requests are validated strictly (wrong JSON types are rejected, not coerced) and unknown fields are
refused, so a client never silently gets behaviour it did not ask for. OpenAI parameters that the
HF engine does not implement are accepted only at their neutral value (e.g. `frequency_penalty: 0`),
which keeps common clients (LangChain, the `openai` package) working. Responses are built with the
shapes the official `openai` Python client parses: `chat.completion`, `chat.completion.chunk`,
`text_completion` and the `{"error": {...}}` body.

Every value the schema accepts is one the engine can execute: seeds are limited to what
`torch.Generator.manual_seed` takes, and stop sequences to OpenAI's four, each at most
`MAX_STOP_CHARS` long, so that no parameter can make a request fail later inside a shared batch.
(Temperatures between 0 and the engine's minimum are served greedily, see `pajama.serve.engine`.)
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
# Bounded cost per request: each choice (prompt x n) is a row of the replica's batch.
MAX_N = 16
MAX_CHOICES = 64
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for /v1/completions
MAX_TOP_LOGPROBS = 20  # and for /v1/chat/completions
# torch.Generator.manual_seed takes any integer that fits in 64 bits, signed or not.
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1


class APIError(Exception):
    """An error the API reports to the client as `{"error": {...}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def validation_error_to_api_error(error: ValidationError) -> APIError:
    """The first pydantic error as a 400 naming the offending parameter."""
    first = error.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    message = f"Invalid value for '{param}': {first['msg']}" if param else first["msg"]
    return APIError(400, message, param=param, code="invalid_value")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingRequest(_Strict):
    """Parameters shared by /v1/completions and /v1/chat/completions."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    # Not an OpenAI parameter, but vLLM and most open servers accept it; 0 or -1 disables it.
    top_k: int = Field(default=0, ge=-1)
    seed: int | None = Field(default=None, ge=MIN_SEED, le=MAX_SEED)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    # Accepted at their neutral values only: the HF engine implements no penalties.
    frequency_penalty: Literal[0, 0.0] = 0
    presence_penalty: Literal[0, 0.0] = 0
    logit_bias: dict[str, float] | None = Field(default=None, max_length=0)

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_SEQUENCES or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(
                f"at most {MAX_STOP_SEQUENCES} non-empty stop sequences of at most {MAX_STOP_CHARS} characters are allowed"
            )
        return stop

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingRequest):
    # Text, several texts, token ids, or several lists of token ids (lm-evaluation-harness's form).
    prompt: str | list[str] | list[int] | list[list[int]] = Field(min_length=1)
    # 0 generates nothing: with echo and logprobs, it scores the prompt.
    max_tokens: int | None = Field(default=None, ge=0)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool = False
    best_of: Literal[1] | None = None
    suffix: None = None

    @model_validator(mode="after")
    def _bounded_choices(self):
        if len(self.prompts()) * self.n > MAX_CHOICES:
            raise ValueError(f"prompts x n may be at most {MAX_CHOICES}")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 generates nothing: it is only allowed with echo")
        return self

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)

    def prompt_chars(self) -> int:
        return sum(len(prompt) for prompt in self.prompts())

    def choices(self) -> int:
        return len(self.prompts()) * self.n


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    # "developer" is the newer OpenAI name for "system".
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_template_message(self) -> dict[str, str]:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: dict | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs is only allowed when logprobs is true")
        return self

    def logprobs_count(self) -> int | None:
        """The engine's form: None for no logprobs, else how many alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def choices(self) -> int:
        return self.n

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, response_format: dict | None) -> dict | None:
        if response_format not in (None, {"type": "text"}):
            raise ValueError("only {'type': 'text'} is supported")
        return response_format

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt_chars(self) -> int:
        return sum(len(message.as_template_message()["content"]) for message in self.messages)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_choice(index: int, text: str, finish_reason: str, logprobs: dict | None) -> dict:
    message = {"role": "assistant", "content": text}
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_response(*, id: str, created: int, model: str, fingerprint: str, choices: list[dict], usage: dict | None) -> dict:
    """A whole completion; a streamed completion chunk has the same shape."""
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": choices,
        "usage": usage,
    }


def chat_response(*, id: str, created: int, model: str, fingerprint: str, choices: list[dict], usage: dict) -> dict:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": choices,
        "usage": usage,
    }


def chat_chunk(
    *, id: str, created: int, model: str, fingerprint: str, index: int, delta: dict, finish_reason: str | None,
    logprobs: dict | None = None,
) -> dict:
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
    }


def usage_chunk(*, id: str, created: int, model: str, fingerprint: str, chat: bool, usage: dict) -> dict:
    """The extra last chunk OpenAI sends when `stream_options.include_usage` is true: no choices."""
    return {
        "id": id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [],
        "usage": usage,
    }


def chat_logprobs(entries) -> dict:
    """`choices[i].logprobs` of a chat completion, from `pajama.serve.events.TokenLogprob`s."""

    def item(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    content = [{**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries]
    return {"content": content, "refusal": None}


def completion_logprobs(entries, offset: int) -> tuple[dict, int]:
    """`choices[i].logprobs` of a completion (the legacy shape) and the text offset after it.

    `top_logprobs` holds the requested alternatives and the chosen token, as OpenAI's does; a
    prompt's first token has neither a logprob nor alternatives (null), as in OpenAI's echo.
    """
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    for e in entries:
        tokens.append(e.token)
        token_logprobs.append(e.logprob)
        top_logprobs.append(None if e.logprob is None else {**dict(e.top), e.token: e.logprob})
        text_offset.append(offset)
        offset += len(e.token)
    logprobs = {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": text_offset}
    return logprobs, offset
