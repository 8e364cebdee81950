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
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    # Accepted at their neutral values only: the HF engine implements no penalties or logprobs.
    frequency_penalty: Literal[0, 0.0] = 0
    presence_penalty: Literal[0, 0.0] = 0
    logit_bias: dict[str, float] | None = Field(default=None, max_length=0)
    logprobs: Literal[False] | None = None

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
    prompt: str | list[str] = Field(min_length=1)
    echo: Literal[False] = False
    best_of: Literal[1] | None = None
    suffix: None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("exactly one prompt per request is supported (n=1)")
        return prompt

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def prompt_chars(self) -> int:
        return len(self.prompt_text())


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


def completion_response(
    *, id: str, created: int, model: str, fingerprint: str, text: str, finish_reason: str, usage: dict
) -> dict:
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }


def completion_chunk(
    *, id: str, created: int, model: str, fingerprint: str, text: str, finish_reason: str | None,
    usage: dict | None = None,
) -> dict:
    """A streamed completion chunk has the shape of a whole completion."""
    return completion_response(id=id, created=created, model=model, fingerprint=fingerprint, text=text,
                               finish_reason=finish_reason, usage=usage)


def chat_response(
    *, id: str, created: int, model: str, fingerprint: str, text: str, finish_reason: str, usage: dict
) -> dict:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
    }


def chat_chunk(
    *, id: str, created: int, model: str, fingerprint: str, delta: dict, finish_reason: str | None
) -> dict:
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
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
