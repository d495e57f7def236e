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
    prefill_s: float = 120.0
    first_token_s: float = 120.0
    request_s: float = 600.0


class PrefillShareBackend:
    def __init__(self, routes: dict[str, RoleRoute], timeouts: StageTimeouts,
                 max_retries: int = 2) -> None:
        self.routes = routes
        self.timeouts = timeouts
        self.max_retries = max_retries
        self.retries = 0

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
                    raise BackendError(f"serving replica lost: {exc}; retry the request", 503) from exc
                self.retries += 1
                log.warning("request %s: replica lost (%s), retrying (%d)", rid, exc, attempt + 1)

    async def _attempt(self, route: RoleRoute, request: GenerationRequest, rid: str,
                       deadline: float) -> AsyncIterator[GenerationDelta]:
        t0 = time.perf_counter()
        prompt = list(request.prompt_token_ids)
        try:
            prefill = await asyncio.wait_for(
                route.prefill.prefill(rid, prompt, request.session_id),
                timeout=min(self.timeouts.prefill_s, _left(deadline)),
            )
        except asyncio.TimeoutError as exc:
            raise BackendError("prefill timed out", 504, "timeout") from exc
        t_prefill = time.perf_counter()
        params = prefill.kv_transfer_params
        stream = route.decode.generate(rid, prompt, request.sampling, params, route.lora_name,
                                       request.session_id).__aiter__()
        first = True
        try:
            while True:
                limit = self.timeouts.first_token_s if first else _left(deadline)
                try:
                    delta = await asyncio.wait_for(stream.__anext__(), timeout=min(limit, _left(deadline)))
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError as exc:
                    stage = "KV pull / first decode token" if first else "request"
                    raise BackendError(f"{stage} timed out", 504, "timeout") from exc
                if first:
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


def _left(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


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
