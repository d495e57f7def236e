"""The wire protocol between the ingress and the engine pools: one typed message per hop.

Imported by both sides (router_service in the ingress replica; prefill_service and
decode_service in the engine replicas) and importing neither: plain frozen dataclasses that
Ray pickles between processes. The hops of one request:

    ingress --PrefillRequest--> PrefillServer.prefill --> PrefillResult
    ingress --DecodeRequest---> DecodeServer.generate  --> KvLoaded?, GenerationDelta ...

Each request carries its ``RouteHints``: what Serve's request router (routing/serve_router.py,
running in the caller's process) reads to rank replicas. The router reads these fields, never
argument positions. Failures on any hop are a ``ServingError`` whose ``code`` is one of
``ErrorCode``; the ingress renders it as OpenAI's error body with that HTTP status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RouteHints:
    """What the request router needs to place a call (nothing here is read by the engine)."""

    session_id: str | None = None
    block_hashes: tuple[int, ...] = ()  # chained hashes of the prompt's full KV blocks
    num_tokens: int = 0
    target_replica: str | None = None  # a probe pinned to one Serve replica (unique id)


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on every sampled token (vLLM's StructuredOutputsParams): exactly one of
    ``json`` (a JSON Schema, as JSON text), ``json_object`` or ``structural_tag`` (xgrammar's
    structural tag, as JSON text: how tool_choice required/named force a tool call)."""

    json: str | None = None
    json_object: bool = False
    structural_tag: str | None = None


@dataclass(frozen=True)
class SamplingSpec:
    """One decode sequence's sampling knobs, validated by the ingress (maps one to one onto
    vLLM's SamplingParams on the decode engine). n>1 is n decode requests, one per choice."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None  # top-k alternatives per token; None: no logprobs at all
    ignore_eos: bool = False
    min_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), ids checked in the vocab
    structured_output: StructuredOutput | None = None


@dataclass(frozen=True)
class PrefillRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    route: RouteHints = RouteHints()


@dataclass(frozen=True)
class PrefillResult:
    kv_transfer_params: dict[str, Any]  # where the leased blocks are (vLLM NixlConnector)
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens served from the prefill engine's prefix cache
    prefill_s: float
    engine_id: str


@dataclass(frozen=True)
class DecodeRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingSpec
    # None: the decode engine prefills itself (no remote KV); otherwise PrefillResult's params.
    kv_transfer_params: dict[str, Any] | None
    lora_name: str | None = None
    lora_path: str | None = None  # the adapter's folder: a role added while running is loaded from it
    route: RouteHints = RouteHints()
    # A continuation after a decode replica died (router_service/migration.py): the prompt is
    # the original prompt plus the tokens already sent, and only its first
    # ``prefilled_tokens`` were prefilled. None: the whole prompt was (a first attempt).
    prefilled_tokens: int | None = None


@dataclass(frozen=True)
class ReleaseRequest:
    """Free the prefill blocks of a request that will never be decoded (before their lease
    runs out)."""

    request_id: str
    kv_transfer_params: dict[str, Any]


@dataclass(frozen=True)
class ReplicaProbe:
    """A call to one engine replica's own state (stats, leak check), pinned by the router."""

    route: RouteHints = RouteHints()

    @staticmethod
    def of(replica_unique_id: str | None) -> ReplicaProbe:
        return ReplicaProbe(RouteHints(target_replica=replica_unique_id))


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
    index: int = 0  # which choice (n>1): the ingress numbers its decode sequences
    # Filled on the final delta: what the serving path did for this request.
    num_cached_prompt_tokens: int | None = None
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class KvLoaded:
    """Decode's first event when the prompt's KV arrived before the first token: the ingress
    then stops the KV-pull clock and starts the first-token one. Never sent to a client."""


DecodeEvent = GenerationDelta | KvLoaded


class ErrorCode:
    """The OpenAI body's ``code`` for failures of the serving path (which stage failed)."""

    PREFILL_TIMEOUT = "prefill_timeout"
    KV_PULL_TIMEOUT = "kv_pull_timeout"
    FIRST_TOKEN_TIMEOUT = "first_token_timeout"
    REQUEST_TIMEOUT = "request_timeout"
    KV_PULL_FAILED = "kv_pull_failed"  # the decode engine could not load the KV (policy fail)
    REPLICA_LOST = "replica_lost"
    ADAPTER_NOT_SERVED = "adapter_not_served"
    SAMPLING_REFUSED = "sampling_refused"  # the decode engine rejected the sampling params
    OVERLOADED = "overloaded"  # admission control refused new work (503 with Retry-After)


INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class ServingError(Exception):
    """Every failure a client can see, raised anywhere on the path and rendered once by the
    ingress as ``{"error": {"message", "type", "param", "code"}}`` with ``status_code``.

    ``retryable``: the ingress may try the request again (nothing reached the client yet).
    ``headers``: extra response headers (Retry-After on a 429)."""

    def __init__(self, message: str, status_code: int = 400, error_type: str | None = None, *,
                 param: str | None = None, code: str | None = None,
                 retryable: bool | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_type = error_type or (INVALID_REQUEST if status_code < 500 else SERVER_ERROR)
        self.param = param
        self.code = code
        self.retryable = status_code >= 500 if retryable is None else retryable
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


def error_body(message: str, error_type: str = INVALID_REQUEST, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
