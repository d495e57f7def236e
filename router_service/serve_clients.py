"""PrefillClient / DecodeClient over Ray Serve deployment handles (the Ray glue of the P/D
pipeline). Runs in the ingress replica. Replica deaths become ``ReplicaGone`` so the pipeline
can retry; the session id rides along for the request routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from router_service.backend import GenerationDelta, SamplingSpec
from router_service.pd_backend import ReplicaGone
from router_service.routing.block_hashes import prompt_block_hashes

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
    def __init__(self, handle: Any, block_size: int, namespace: str) -> None:
        self.handle = handle
        self.block_size = block_size
        self.namespace = namespace

    async def prefill(self, request_id: str, prompt_token_ids: list[int],
                      session_id: str | None) -> Any:
        h = self.handle.options(session_id=session_id) if session_id else self.handle
        # The request router ranks replicas by which of these blocks they already hold.
        hashes = prompt_block_hashes(prompt_token_ids, self.block_size, self.namespace)
        try:
            return await h.prefill.remote(request_id, prompt_token_ids, block_hashes=list(hashes))
        except Exception as exc:
            if _is_replica_loss(exc):
                raise _replica_gone(self.namespace, exc) from exc
            raise _unwrap(exc) from None


class ServeDecodeClient:
    def __init__(self, handle: Any, block_size: int, namespace: str) -> None:
        self.handle = handle
        self.block_size = block_size
        self.namespace = namespace

    async def generate(self, request_id: str, prompt_token_ids: list[int], sampling: SamplingSpec,
                       kv_transfer_params: dict[str, Any], lora_name: str | None,
                       session_id: str | None) -> AsyncIterator[GenerationDelta]:
        h = self.handle.options(stream=True)
        if session_id:
            h = h.options(session_id=session_id)
        hashes = prompt_block_hashes(prompt_token_ids, self.block_size, self.namespace)
        gen = h.generate.remote(request_id, prompt_token_ids, sampling, kv_transfer_params,
                                lora_name, block_hashes=list(hashes))
        try:
            async for delta in gen:
                yield delta
        except Exception as exc:
            if _is_replica_loss(exc):
                raise _replica_gone(self.namespace, exc) from exc
            raise _unwrap(exc) from None
        finally:
            # Leaving early (client gone, timeout) cancels the call in the decode replica,
            # whose engine then aborts the request and frees its blocks.
            gen.cancel()

    async def release(self, request_id: str, kv_transfer_params: dict[str, Any]) -> None:
        await self.handle.release.remote(request_id, kv_transfer_params)
