"""PrefillClient / DecodeClient over Ray Serve deployment handles (the Ray glue of the P/D
pipeline). Runs in the ingress replica. Replica deaths become ``ReplicaGone`` so the pipeline
can retry; the session id rides along for the request routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from contract.wire import DecodeEvent, DecodeRequest, PrefillRequest, PrefillResult, ReleaseRequest
from router_service.pd_backend import ReplicaGone

log = logging.getLogger(__name__)


def _is_replica_loss(exc: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return isinstance(exc, (ActorDiedError, ActorUnavailableError, RayActorError))


def _replica_gone(deployment: str, exc: BaseException) -> ReplicaGone:
    """The client's message names the pool only: Ray's text carries actor ids, pids and node
    addresses, which stay in the log."""
    log.warning("%s replica lost: %s", deployment, exc)
    return ReplicaGone(f"a {deployment} replica died")


def _unwrap(exc: BaseException) -> BaseException:
    """Errors raised inside a replica arrive wrapped in RayTaskError: give back the cause."""
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError):
        cause = exc.as_instanceof_cause()
        inner = getattr(exc, "cause", None)
        return inner if isinstance(inner, BaseException) else cause
    return exc


class ServePrefillClient:
    def __init__(self, handle: Any, deployment: str) -> None:
        self.handle = handle
        self.deployment = deployment

    async def prefill(self, request: PrefillRequest) -> PrefillResult:
        session = request.route.session_id
        h = self.handle.options(session_id=session) if session else self.handle
        try:
            return await h.prefill.remote(request)
        except Exception as exc:
            if _is_replica_loss(exc):
                raise _replica_gone(self.deployment, exc) from exc
            raise _unwrap(exc) from None


class ServeDecodeClient:
    def __init__(self, handle: Any, deployment: str) -> None:
        self.handle = handle
        self.deployment = deployment

    async def generate(self, request: DecodeRequest) -> AsyncIterator[DecodeEvent]:
        h = self.handle.options(stream=True)
        if request.route.session_id:
            h = h.options(session_id=request.route.session_id)
        gen = h.generate.remote(request)
        try:
            async for event in gen:
                yield event
        except Exception as exc:
            if _is_replica_loss(exc):
                raise _replica_gone(self.deployment, exc) from exc
            raise _unwrap(exc) from None
        finally:
            # Leaving early (client gone, timeout) cancels the call in the decode replica,
            # whose engine then aborts the request and frees its blocks.
            gen.cancel()

    async def release(self, request: ReleaseRequest) -> None:
        await self.handle.release.remote(request)
