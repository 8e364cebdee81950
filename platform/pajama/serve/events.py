"""What a model replica streams back to the ingress for one request (kept free of torch imports).

A stream is `Started`, `Rejected` or `Failed` first; after `Started` come `Delta`s and one
`Finished`, or a `Failed` if generation broke for this request.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Started:
    prompt_tokens: int
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
    """Generation broke inside the replica (a 500 for the client); the replica keeps serving."""

    message: str


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    text: str  # the last piece of text, not yet sent as a Delta
    finish_reason: str  # "stop" or "length"
    completion_tokens: int
