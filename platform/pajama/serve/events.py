"""What a model replica streams back to the ingress for one request (kept free of torch imports).

A stream is `Started`, `Rejected` or `Failed` first; after `Started` come lists of `Delta`s and
`Finished`es (every event that was ready when the replica looked, so that a busy replica sends one
message per step rather than one per token), or a `Failed` if generation broke for this request.
A request has one choice per prompt and per `n`; `index` says which choice an event belongs to,
and each choice ends with its own `Finished`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Started:
    prompt_tokens: int  # over all the request's prompts
    model_version: str
    run_id: str | None


@dataclass(frozen=True)
class Rejected:
    """The request cannot be served as asked (a 400 for the client)."""

    message: str
    param: str | None
    code: str


@dataclass(frozen=True)
class Failed:
    """Generation broke inside the replica: a 500 for the client, or a 503 if a retry can help
    (`retryable`: the replica is stuck and about to be replaced)."""

    message: str
    retryable: bool = False
    index: int = 0  # the choice that failed (which fails its whole request)


@dataclass(frozen=True)
class TokenLogprob:
    """One token of a choice with its log probability under the model (no temperature applied)."""

    token: str
    logprob: float | None  # None for a prompt's first token, which nothing predicts
    top: tuple[tuple[str, float], ...]  # the most likely tokens at this position, best first


@dataclass(frozen=True)
class Delta:
    text: str
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()  # for the tokens behind this text, when asked for


@dataclass(frozen=True)
class Finished:
    text: str  # the last piece of text, not yet sent as a Delta
    finish_reason: str  # "stop" or "length"
    completion_tokens: int
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
