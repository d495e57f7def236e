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

from contract.roles import ServedRole
from contract.wire import (
    DecodeEvent,
    DecodeRequest,
    ErrorCode,
    GenerationDelta,
    KvLoaded,
    PrefillRequest,
    PrefillResult,
    ReleaseRequest,
    RouteHints,
    ServingError,
)
from router_service.backend import GenerationRequest
from router_service.choices import fan_out
from router_service.migration import continued_sampling, why_not_resumable
from router_service.role_table import RoleTable
from routing.block_hashes import prompt_block_hashes

log = logging.getLogger(__name__)


class ReplicaGone(Exception):
    """The replica serving a call died or was removed: the call may be retried elsewhere."""


class PrefillClient(Protocol):
    async def prefill(self, request: PrefillRequest) -> PrefillResult: ...


class DecodeClient(Protocol):
    def generate(self, request: DecodeRequest) -> AsyncIterator[DecodeEvent]: ...

    async def release(self, request: ReleaseRequest) -> None: ...


@dataclass(frozen=True)
class StageTimeouts:
    """Each stage's own limit; every one also ends at the whole request's deadline."""

    prefill_s: float = 120.0
    kv_pull_s: float = 120.0  # decode call -> KV loaded (the first token, if no marker comes)
    first_token_s: float = 120.0  # KV loaded -> first decode token
    request_s: float = 600.0


# stage -> (what the message says, ServingError.code)
STAGES = {
    "prefill": ("prefill", ErrorCode.PREFILL_TIMEOUT),
    "kv_pull": ("KV pull", ErrorCode.KV_PULL_TIMEOUT),
    "first_token": ("first decode token", ErrorCode.FIRST_TOKEN_TIMEOUT),
    "request": ("request", ErrorCode.REQUEST_TIMEOUT),
}


def stage_timeout(stage: str, limit_s: float) -> ServingError:
    """504 naming the stage that ran out of time; retryable (the next try may be luckier)."""
    what, code = STAGES[stage]
    return ServingError(f"{what} timed out after {limit_s:g}s; retry the request", 504,
                        "timeout", code=code)


@dataclass(frozen=True)
class Pool:
    """A client of one engine deployment and the block size its request router hashes by."""

    client: Any  # PrefillClient or DecodeClient
    block_size: int


class PrefillShareBackend:
    def __init__(self, roles: list[ServedRole] | RoleTable, prefill: dict[str, Pool],
                 decode: dict[str, Pool], timeouts: StageTimeouts, max_retries: int = 2) -> None:
        # A RoleTable the ingress replaces as roles change; a list makes a fixed one.
        self.roles = roles if isinstance(roles, RoleTable) else RoleTable(roles)
        self.prefill = prefill
        self.decode = decode
        self.timeouts = timeouts
        self.max_retries = max_retries
        self.retries = 0
        self.retries_by_reason: dict[str, int] = {}

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        role = self.roles.get(request.role)
        if role is None:
            raise ServingError(f"unknown role {request.role!r}", 404, retryable=False)
        deadline = time.monotonic() + self.timeouts.request_s
        if request.n == 1:
            async with contextlib.aclosing(self._choice(role, request, deadline)) as it:
                async for delta in it:
                    yield delta
            return

        def one(index: int, prefilled: asyncio.Event) -> AsyncIterator[GenerationDelta]:
            return self._choice(role, _nth_choice(request, index), deadline, prefilled)

        async with contextlib.aclosing(fan_out(one, request.n)) as merged:
            async for delta in merged:
                yield delta

    async def _choice(self, role: ServedRole, request: GenerationRequest, deadline: float,
                      prefilled: asyncio.Event | None = None) -> AsyncIterator[GenerationDelta]:
        """One decode sequence. While nothing reached the client, a lost replica or a failed KV
        pull means trying again on another replica; after tokens did, a lost decode replica
        means continuing the stream on another one from the tokens sent (migration.py)."""
        sent: list[int] = []  # token ids that reached our consumer, in order
        for attempt in range(self.max_retries + 1):
            rid = request.request_id if attempt == 0 else f"{request.request_id}-r{attempt}"
            finished = False
            try:
                # aclosing: when our consumer closes us early, the attempt (and its decode
                # stream) closes now, not whenever the event loop finalizes the generator.
                async with contextlib.aclosing(self._attempt(
                        role, request, rid, deadline, prefilled, tuple(sent))) as it:
                    async for delta in it:
                        sent.extend(delta.token_ids)
                        finished = delta.finish_reason is not None
                        yield delta
                return
            except ReplicaGone as exc:
                lost: BaseException = exc
            except ServingError as exc:
                if exc.code == ErrorCode.KV_PULL_FAILED and attempt < self.max_retries:
                    # A failed KV pull (policy "fail") comes before the attempt's first token:
                    # prefill again (a continuation goes on from the same sent tokens).
                    self._count_retry(ErrorCode.KV_PULL_FAILED, rid, exc, attempt)
                    continue
                if exc.code != ErrorCode.REPLICA_LOST:
                    raise
                lost = exc
            if finished:  # the replica went after the last token: the stream is whole
                return
            if attempt == self.max_retries:
                raise ServingError(f"serving replica lost: {lost} (on each of {attempt + 1} "
                                   "tries); retry the request", 503,
                                   code=ErrorCode.REPLICA_LOST) from lost
            if sent:
                why = why_not_resumable(request.sampling)
                if why is not None:
                    raise ServingError(
                        f"serving replica lost: {lost}, after {len(sent)} tokens were sent, and "
                        f"this request cannot continue on another one: {why}; retry the "
                        "request", 503, code=ErrorCode.REPLICA_LOST) from lost
            self._count_retry("migrated" if sent else "replica_lost", rid, lost, attempt)

    def _count_retry(self, reason: str, rid: str, exc: BaseException, attempt: int) -> None:
        self.retries += 1
        self.retries_by_reason[reason] = self.retries_by_reason.get(reason, 0) + 1
        log.warning("request %s: %s (%s), retrying (%d)", rid, reason, exc, attempt + 1)

    async def _attempt(self, role: ServedRole, request: GenerationRequest, rid: str,
                       deadline: float, prefilled: asyncio.Event | None = None,
                       sent: tuple[int, ...] = ()) -> AsyncIterator[GenerationDelta]:
        """Prefill, then decode. ``sent``: a continuation, whose decode gets the prompt plus
        the tokens already sent and computes their KV itself."""
        t0 = time.perf_counter()
        prompt = tuple(request.prompt_token_ids)
        prefill_pool = self.prefill[role.prefill_deployment]
        decode_pool = self.decode[role.decode_deployment]
        clock = _StageClock(self.timeouts, deadline, "prefill")
        try:
            prefill = await asyncio.wait_for(prefill_pool.client.prefill(PrefillRequest(
                rid, prompt, _route(request, prompt, prefill_pool, role.prefill_deployment))),
                timeout=clock.left())
        except asyncio.TimeoutError as exc:
            raise clock.expired() from exc
        t_prefill = time.perf_counter()
        if prefilled is not None:
            prefilled.set()
        params = prefill.kv_transfer_params
        sampling = continued_sampling(request.sampling, len(sent)) if sent else request.sampling
        decode_request = DecodeRequest(
            rid, prompt + sent, sampling, params, role.lora_name, role.lora_path,
            _route(request, prompt, decode_pool, role.decode_deployment),
            prefilled_tokens=len(prompt) if sent else None)
        stream = decode_pool.client.generate(decode_request).__aiter__()
        first = True
        clock.enter("kv_pull")
        try:
            while True:
                try:
                    event: DecodeEvent = await asyncio.wait_for(stream.__anext__(),
                                                                timeout=clock.left())
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError as exc:
                    raise clock.expired() from exc
                if isinstance(event, KvLoaded):
                    clock.enter("first_token")
                    continue
                delta = event
                if first:
                    clock.enter("request")
                    t_first = time.perf_counter()
                    first = False
                if delta.finish_reason is not None:
                    delta = _with_prefill_stats(delta, prefill, t_prefill - t0, t_first - t0)
                yield delta
        finally:
            await _close(stream)
            if first:
                # Decode never produced a token: make sure the prefill blocks are not stranded.
                await _release_quietly(decode_pool.client, ReleaseRequest(f"{rid}-release", params))


def _nth_choice(request: GenerationRequest, index: int) -> GenerationRequest:
    """Choice ``index`` of an n>1 request: its own request id and, as vLLM seeds its n
    children, seed + index."""
    seed = request.sampling.seed
    sampling = dataclasses.replace(request.sampling,
                                   seed=None if seed is None else seed + index)
    rid = request.request_id if index == 0 else f"{request.request_id}-{index}"
    return dataclasses.replace(request, request_id=rid, sampling=sampling, n=1)


def _route(request: GenerationRequest, prompt: tuple[int, ...], pool: Pool,
           namespace: str) -> RouteHints:
    """The request router of each pool ranks replicas by which of these blocks they hold;
    hashes are namespaced by deployment, as the engines' KV-event feeds are."""
    return RouteHints(session_id=request.session_id,
                      block_hashes=prompt_block_hashes(prompt, pool.block_size, namespace),
                      num_tokens=len(prompt))


def _with_prefill_stats(delta: GenerationDelta, prefill: PrefillResult, prefill_s: float,
                        ttft_s: float) -> GenerationDelta:
    # cached_tokens in the API's usage: what the PREFILL pool's prefix cache served, the number
    # that says whether routing kept the session local.
    return dataclasses.replace(delta, num_cached_prompt_tokens=prefill.num_cached_tokens, stats={
        **delta.stats,
        "prefill_s": prefill_s,
        "ttft_s": ttft_s,
        "prefill_cached_tokens": float(prefill.num_cached_tokens),
    })


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

    def expired(self) -> ServingError:
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


async def _release_quietly(decode: DecodeClient, release: ReleaseRequest) -> None:
    # A fresh request id: the aborted decode request may still be known to the engine.
    try:
        await asyncio.shield(decode.release(release))
    except Exception as exc:
        log.debug("release of %s failed: %s (the lease will expire)", release.request_id, exc)
