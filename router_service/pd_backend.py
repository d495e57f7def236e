"""The P/D pipeline behind the API: prefill on the role's prefill pool, then stream from the
role's decode pool, which pulls the KV over NIXL.

Runs in the ingress replica. Pure asyncio over two small client protocols, so the retry,
timeout and cleanup logic is tested with fakes; router_service/serve_clients.py implements the
clients over Ray Serve handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from router_service.backend import BackendError, GenerationDelta, GenerationRequest, SamplingSpec

log = logging.getLogger(__name__)


class ReplicaGone(Exception):
    """The replica serving a call died or was removed: the call may be retried elsewhere."""


# A decode client may yield a delta with no tokens and this stat once the request's KV is in
# the decode engine: the pipeline then stops the KV pull clock and starts the first-token one.
# It is consumed here, never sent to the API.
KV_LOADED_STAT = "kv_loaded"
KV_PULL_FAILED = "kv_pull_failed"  # BackendError.code of a failed pull (policy "fail")


class PrefillClient(Protocol):
    async def prefill(self, request_id: str, prompt_token_ids: list[int],
                      session_id: str | None) -> Any: ...


class DecodeClient(Protocol):
    def generate(self, request_id: str, prompt_token_ids: list[int], sampling: SamplingSpec,
                 kv_transfer_params: dict[str, Any], lora_name: str | None,
                 session_id: str | None) -> AsyncIterator[GenerationDelta]: ...

    async def release(self, request_id: str, kv_transfer_params: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class RoleRoute:
    """Where one role's requests go."""

    prefill: PrefillClient
    decode: DecodeClient
    lora_name: str | None = None


@dataclass(frozen=True)
class StageTimeouts:
    """Each stage's own limit; every one also ends at the whole request's deadline."""

    prefill_s: float = 120.0
    kv_pull_s: float = 120.0  # decode call -> KV loaded (the first token, if no marker comes)
    first_token_s: float = 120.0  # KV loaded -> first decode token
    request_s: float = 600.0


# stage -> (what the message says, BackendError.code)
STAGES = {
    "prefill": ("prefill", "prefill_timeout"),
    "kv_pull": ("KV pull", "kv_pull_timeout"),
    "first_token": ("first decode token", "first_token_timeout"),
    "request": ("request", "request_timeout"),
}


def stage_timeout(stage: str, limit_s: float) -> BackendError:
    """504 naming the stage that ran out of time; retryable (the next try may be luckier)."""
    what, code = STAGES[stage]
    return BackendError(f"{what} timed out after {limit_s:g}s; retry the request", 504,
                        "timeout", code=code)


class PrefillShareBackend:
    def __init__(self, routes: dict[str, RoleRoute], timeouts: StageTimeouts,
                 max_retries: int = 2) -> None:
        self.routes = routes
        self.timeouts = timeouts
        self.max_retries = max_retries
        self.retries = 0
        self.retries_by_reason: dict[str, int] = {}

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        route = self.routes.get(request.role)
        if route is None:
            raise BackendError(f"unknown role {request.role!r}", 404, "invalid_request_error", False)
        deadline = time.monotonic() + self.timeouts.request_s
        for attempt in range(self.max_retries + 1):
            rid = request.request_id if attempt == 0 else f"{request.request_id}-r{attempt}"
            streamed = False
            try:
                # aclosing: when our consumer closes us early, the attempt (and its decode
                # stream) closes now, not whenever the event loop finalizes the generator.
                async with contextlib.aclosing(self._attempt(route, request, rid, deadline)) as it:
                    async for delta in it:
                        streamed = True
                        yield delta
                return
            except ReplicaGone as exc:
                # Once tokens reached the client a retry would repeat them: fail instead.
                if streamed or attempt == self.max_retries:
                    raise BackendError(f"serving replica lost: {exc}; retry the request", 503,
                                       code="replica_lost") from exc
                self._count_retry("replica_lost", rid, exc, attempt)
            except BackendError as exc:
                # A failed KV pull (policy "fail") left no token behind: prefill again.
                if exc.code != KV_PULL_FAILED or streamed or attempt == self.max_retries:
                    raise
                self._count_retry(KV_PULL_FAILED, rid, exc, attempt)

    def _count_retry(self, reason: str, rid: str, exc: BaseException, attempt: int) -> None:
        self.retries += 1
        self.retries_by_reason[reason] = self.retries_by_reason.get(reason, 0) + 1
        log.warning("request %s: %s (%s), retrying (%d)", rid, reason, exc, attempt + 1)

    async def _attempt(self, route: RoleRoute, request: GenerationRequest, rid: str,
                       deadline: float) -> AsyncIterator[GenerationDelta]:
        t0 = time.perf_counter()
        prompt = list(request.prompt_token_ids)
        clock = _StageClock(self.timeouts, deadline, "prefill")
        try:
            prefill = await asyncio.wait_for(
                route.prefill.prefill(rid, prompt, request.session_id), timeout=clock.left())
        except asyncio.TimeoutError as exc:
            raise clock.expired() from exc
        t_prefill = time.perf_counter()
        params = prefill.kv_transfer_params
        stream = route.decode.generate(rid, prompt, request.sampling, params, route.lora_name,
                                       request.session_id).__aiter__()
        first = True
        clock.enter("kv_pull")
        try:
            while True:
                try:
                    delta = await asyncio.wait_for(stream.__anext__(), timeout=clock.left())
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError as exc:
                    raise clock.expired() from exc
                if first and not delta.token_ids and delta.stats.get(KV_LOADED_STAT):
                    clock.enter("first_token")
                    continue
                if first:
                    clock.enter("request")
                    t_first = time.perf_counter()
                    first = False
                if delta.finish_reason is not None:
                    # cached_tokens in the API's usage: what the PREFILL pool's prefix cache
                    # served, the number that says whether routing kept the session local.
                    delta = dataclasses.replace(delta, num_cached_prompt_tokens=prefill.num_cached_tokens, stats={
                        **delta.stats,
                        "prefill_s": t_prefill - t0,
                        "ttft_s": t_first - t0,
                        "prefill_cached_tokens": float(prefill.num_cached_tokens),
                    })
                yield delta
        finally:
            await _close(stream)
            if first:
                # Decode never produced a token: make sure the prefill blocks are not stranded.
                await _release_quietly(route.decode, rid, params)


class _StageClock:
    """The stage an attempt is in and when it must end: its own limit from when it began,
    or the whole request's deadline if that comes first (then the error names the request)."""

    def __init__(self, timeouts: StageTimeouts, deadline: float, stage: str) -> None:
        self.timeouts = timeouts
        self.deadline = deadline
        self.enter(stage)

    def enter(self, stage: str) -> None:
        self.stage = stage
        self.limit_s = getattr(self.timeouts, f"{stage}_s")
        self.stage_end = (self.deadline if stage == "request"
                          else min(time.monotonic() + self.limit_s, self.deadline))

    def left(self) -> float:
        return max(0.001, self.stage_end - time.monotonic())

    def expired(self) -> BackendError:
        if self.stage != "request" and self.stage_end >= self.deadline:
            return stage_timeout("request", self.timeouts.request_s)
        return stage_timeout(self.stage, self.limit_s)


async def _close(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # the stream may already be dead with its replica
            pass


async def _release_quietly(decode: DecodeClient, rid: str, params: dict[str, Any]) -> None:
    try:
        # A fresh id: the aborted decode request may still be known to the engine.
        await asyncio.shield(decode.release(f"{rid}-release", params))
    except Exception as exc:
        log.debug("release of %s failed: %s (the lease will expire)", rid, exc)
