"""Fake prefill and decode clients for the P/D pipeline's tests (router_service/pd_backend.py):
scripted outcomes per call, and the calls they saw."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from contract.roles import ServedRole
from contract.wire import (
    DecodeRequest,
    ErrorCode,
    GenerationDelta,
    PrefillRequest,
    ReleaseRequest,
    SamplingSpec,
    ServingError,
)
from router_service.backend import GenerationRequest
from router_service.pd_backend import Pool, PrefillShareBackend, StageTimeouts

FAST = StageTimeouts(prefill_s=0.05, kv_pull_s=0.05, first_token_s=0.05, request_s=5.0)
SAMPLING = SamplingSpec(max_tokens=3)
SLOW = 10.0  # longer than any timeout used here; wait_for cancels it


@dataclass
class FakePrefill:
    """Each call takes the next outcome: "ok", "slow" or an exception to raise."""

    outcomes: list[Any] = field(default_factory=list)
    calls: list[tuple[str, list[int], str | None]] = field(default_factory=list)

    async def prefill(self, request: PrefillRequest) -> Any:
        request_id = request.request_id
        self.calls.append((request_id, list(request.prompt_token_ids), request.route.session_id))
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if outcome == "slow":
            await asyncio.sleep(SLOW)
        elif isinstance(outcome, BaseException):
            raise outcome
        return SimpleNamespace(kv_transfer_params={"remote_request_id": request_id},
                               num_cached_tokens=3)


def tokens(n: int, finish: str = "stop") -> list[GenerationDelta]:
    return [GenerationDelta(text=f"t{i}", token_ids=(i,),
                            finish_reason=finish if i == n - 1 else None,
                            stats={"decode_s": 0.5} if i == n - 1 else {})
            for i in range(n)]


@dataclass
class FakeDecode:
    """Each generate() call plays the next script: a list of deltas, "slow" (waits) and
    exceptions (raised), in order."""

    scripts: list[list[Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    released: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    release_error: Exception | None = None

    async def generate(self, request: DecodeRequest) -> AsyncIterator[GenerationDelta]:
        request_id = request.request_id
        self.calls.append({"rid": request_id, "prompt": list(request.prompt_token_ids),
                           "sampling": request.sampling, "params": request.kv_transfer_params,
                           "lora": request.lora_name, "session": request.route.session_id,
                           "prefilled": request.prefilled_tokens})
        script = self.scripts.pop(0) if self.scripts else tokens(3)
        try:
            for step in script:
                if step == "slow":
                    await asyncio.sleep(SLOW)
                elif isinstance(step, BaseException):
                    raise step
                else:
                    yield step
        finally:
            self.closed.append(request_id)

    async def release(self, request: ReleaseRequest) -> None:
        self.released.append((request.request_id, request.kv_transfer_params))
        if self.release_error is not None:
            raise self.release_error


def backend(prefill: FakePrefill, decode: FakeDecode, timeouts: StageTimeouts = FAST,
             max_retries: int = 2, lora_name: str | None = None,
             role: str = "coder") -> PrefillShareBackend:
    """The pipeline for one role on one prefill and one decode pool."""
    served = ServedRole(role, None, "prefill-shared", f"decode-{role}", lora_name)
    return PrefillShareBackend([served], {"prefill-shared": Pool(prefill, 16)},
                               {f"decode-{role}": Pool(decode, 16)}, timeouts, max_retries)


def request(role: str = "coder") -> GenerationRequest:
    return GenerationRequest("req", role, (5, 6, 7), SAMPLING, session_id="s1")


async def collect(backend: PrefillShareBackend, request: GenerationRequest,
                   into: list[GenerationDelta] | None = None) -> list[GenerationDelta]:
    out = [] if into is None else into
    async for delta in backend.generate(request):
        out.append(delta)
    return out


def one_token_deltas(start: int, n: int, finish: str = "length") -> list[GenerationDelta]:
    """Deltas of one token each, ids start..start+n-1, the last one finishing."""
    return [GenerationDelta(text=f"t{i}", token_ids=(i,),
                            finish_reason=finish if i == start + n - 1 else None)
            for i in range(start, start + n)]


def kv_pull_failed() -> ServingError:
    return ServingError("KV transfer from the prefill pool failed; retry", 503, code=ErrorCode.KV_PULL_FAILED)
