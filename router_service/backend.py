"""The seam between the HTTP API and whatever generates tokens.

Pure data and a Protocol: the ingress (router_service.ingress) talks to the prefill and decode
pools through a ``GenerationBackend``; tests talk to a fake one. No Ray import here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingSpec:
    """The sampling knobs the API accepts, already validated."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # top-k alternatives per token; None: no logprobs at all
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    role: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingSpec
    session_id: str | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class GenerationDelta:
    """New output since the previous delta of the same request."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: str | None = None  # "stop" | "length" | None while running
    # Filled on the final delta: what the serving path did for this request.
    num_cached_prompt_tokens: int | None = None
    stats: dict[str, float] = field(default_factory=dict)


class BackendError(Exception):
    """A failure the API turns into an OpenAI-style error body with this HTTP status."""

    def __init__(self, message: str, status_code: int = 503, error_type: str = "server_error",
                 retryable: bool = True, code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type
        self.retryable = retryable
        self.code = code  # the OpenAI body's `code`: which stage failed ("kv_pull_timeout" ...)


class GenerationBackend(Protocol):
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Streams deltas; closing the iterator early aborts the request on every engine."""
        ...
