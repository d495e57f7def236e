"""What a routing policy sees and the one seam every policy implements.

Pure data, no Ray: the Ray Serve RequestRouter adapter turns ``RunningReplica`` /
``PendingRequest`` into these, and the simulator builds them directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ReplicaLoad:
    """One candidate replica as the caller sees it right now."""

    replica_id: str
    # Serve's cached queue length: it covers other routers' requests but lags our own sends,
    # so policies take max(queue_len, own in-flight count).
    queue_len: int = 0


@dataclass(frozen=True)
class RouteRequest:
    """The routing-relevant part of one prefill request."""

    request_id: str
    session_id: str | None
    block_hashes: tuple[int, ...]  # routing.block_hashes.prompt_block_hashes
    num_tokens: int


class RoutingPolicy(Protocol):
    """rank() is called once per request; the hooks keep the policy's own view of load and of
    which replica caches what. Serve takes the least-queued replica of the first group that has
    capacity, so a group of one is a strict preference."""

    def rank(self, candidates: Sequence[ReplicaLoad], request: RouteRequest) -> list[list[str]]: ...

    def on_sent(self, replica_id: str, request: RouteRequest) -> None: ...

    def on_finished(self, replica_id: str, request_id: str) -> None: ...

    def on_replica_removed(self, replica_id: str) -> None: ...
