"""The router's own count of in-flight prefill requests and tokens per replica.

Serve's queue-length cache only grows after a request reaches a replica, so under a burst
every decision would otherwise see the same stale load and pile onto one replica. We count our
own sends from ``on_sent`` until ``on_finished`` and take the larger of the two views.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from routing.interface import ReplicaLoad


@dataclass(frozen=True)
class _InFlight:
    replica_id: str
    tokens: int  # expected UNCACHED prompt tokens: the prefill work this request costs


class LoadTracker:
    def __init__(self) -> None:
        self._by_request: dict[str, _InFlight] = {}
        self._requests: dict[str, int] = {}
        self._tokens: dict[str, int] = {}

    def add(self, request_id: str, replica_id: str, tokens: int) -> None:
        if request_id in self._by_request:  # a re-send under the same id replaces the old one
            self.finish(request_id)
        self._by_request[request_id] = _InFlight(replica_id, tokens)
        self._requests[replica_id] = self._requests.get(replica_id, 0) + 1
        self._tokens[replica_id] = self._tokens.get(replica_id, 0) + tokens

    def finish(self, request_id: str) -> None:
        """Idempotent: Serve may report a completion we never saw sent, or twice."""
        entry = self._by_request.pop(request_id, None)
        if entry is None:
            return
        self._requests[entry.replica_id] -= 1
        self._tokens[entry.replica_id] -= entry.tokens

    def drop_replica(self, replica_id: str) -> None:
        for rid in [r for r, e in self._by_request.items() if e.replica_id == replica_id]:
            del self._by_request[rid]
        self._requests.pop(replica_id, None)
        self._tokens.pop(replica_id, None)

    def replicas(self) -> list[str]:
        return sorted(self._requests)

    def requests(self, replica_id: str) -> int:
        return self._requests.get(replica_id, 0)

    def tokens(self, replica_id: str) -> int:
        return self._tokens.get(replica_id, 0)

    def load(self, candidate: ReplicaLoad) -> int:
        """In-flight requests: Serve's count or ours, whichever is larger. Not their sum:
        once Serve's cache catches up it includes our sends too."""
        return max(candidate.queue_len, self.requests(candidate.replica_id))

    def loads(self, candidates: Iterable[ReplicaLoad]) -> dict[str, int]:
        return {c.replica_id: self.load(c) for c in candidates}
