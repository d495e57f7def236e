"""The policies PrefixLocalityPolicy is compared with, behind the same RoutingPolicy seam.

- SessionStickyPolicy: the paper's proxy: hash(session) -> one prefill worker, no load bound.
- PowerOfTwoPolicy: Ray Serve's default: two random replicas, the less loaded first.
- PrefixAffinityPolicy: in the style of Ray Serve LLM's PrefixCacheAffinityRouter: longest
  prefix match while the pool is balanced within a threshold, else least loaded; no sessions.
- LeastLoadedPolicy: pure load balancing.

All count their own sends (LoadTracker) exactly like our policy, so a comparison measures the
placement rule, not who sees fresher load.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from routing.interface import ReplicaLoad, RouteRequest
from routing.load_tracker import LoadTracker
from routing.prefix_index import PrefixIndex


class _TrackingPolicy:
    """Shared hooks: in-flight counting, plus a prefix index for the policies that use one."""

    def __init__(self, block_size: int = 128, index_capacity_blocks: int = 50_000) -> None:
        self.block_size = block_size
        self.tracker = LoadTracker()
        self.index = PrefixIndex(index_capacity_blocks)

    def _by_load(self, candidates: Sequence[ReplicaLoad]) -> list[str]:
        return [c.replica_id for c in sorted(candidates, key=lambda c: (
            self.tracker.load(c), self.tracker.tokens(c.replica_id), c.replica_id))]

    def on_sent(self, replica_id: str, request: RouteRequest) -> None:
        matched = self.index.match_length(replica_id, request.block_hashes)
        self.tracker.add(request.request_id, replica_id,
                         max(0, request.num_tokens - matched * self.block_size))
        self.index.record_sent(replica_id, request.block_hashes)

    def on_finished(self, replica_id: str, request_id: str) -> None:
        self.tracker.finish(request_id)

    def on_replica_removed(self, replica_id: str) -> None:
        self.index.drop_replica(replica_id)
        self.tracker.drop_replica(replica_id)


class LeastLoadedPolicy(_TrackingPolicy):
    def rank(self, candidates: Sequence[ReplicaLoad], request: RouteRequest) -> list[list[str]]:
        return [[r] for r in self._by_load(candidates)]


class SessionStickyPolicy(_TrackingPolicy):
    """hash(session) mod N over the sorted live replicas, as a simple proxy does it. Modulo,
    not consistent hashing: a change in N moves most sessions (the paper describes no
    failover; this is the plain reading). Sessionless requests go to the least loaded."""

    def rank(self, candidates: Sequence[ReplicaLoad], request: RouteRequest) -> list[list[str]]:
        if request.session_id is None or not candidates:
            return [[r] for r in self._by_load(candidates)]
        ids = sorted(c.replica_id for c in candidates)
        digest = hashlib.blake2b(request.session_id.encode(), digest_size=8).digest()
        home = ids[int.from_bytes(digest, "little") % len(ids)]
        rest = [r for r in self._by_load(candidates) if r != home]
        return [[home]] + ([rest] if rest else [])  # the rest only if home is at capacity


class PowerOfTwoPolicy(_TrackingPolicy):
    def __init__(self, block_size: int = 128, index_capacity_blocks: int = 50_000,
                 seed: int = 0) -> None:
        super().__init__(block_size, index_capacity_blocks)
        self._rng = random.Random(seed)

    def rank(self, candidates: Sequence[ReplicaLoad], request: RouteRequest) -> list[list[str]]:
        if len(candidates) <= 2:
            return [[r] for r in self._by_load(candidates)]
        two = self._rng.sample(sorted(candidates, key=lambda c: c.replica_id), 2)
        chosen = self._by_load(two)
        rest = [r for r in self._by_load(candidates) if r not in chosen]
        return [[r] for r in chosen] + [rest]


class PrefixAffinityPolicy(_TrackingPolicy):
    """Ray's rule, over token blocks instead of its character tree: if max - min load is within
    ``imbalanced_threshold``, the replicas with the longest match (if the match covers at least
    ``match_rate_threshold`` of the prompt), else the replicas holding the least cache; if the
    pool is imbalanced, least loaded."""

    def __init__(self, block_size: int = 128, index_capacity_blocks: int = 50_000,
                 imbalanced_threshold: int = 10, match_rate_threshold: float = 0.1) -> None:
        super().__init__(block_size, index_capacity_blocks)
        self.imbalanced_threshold = imbalanced_threshold
        self.match_rate_threshold = match_rate_threshold

    def rank(self, candidates: Sequence[ReplicaLoad], request: RouteRequest) -> list[list[str]]:
        by_load = self._by_load(candidates)
        loads = self.tracker.loads(candidates)
        if not candidates or max(loads.values()) - min(loads.values()) > self.imbalanced_threshold:
            return [[r] for r in by_load]
        matched = {r: self.index.match_length(r, request.block_hashes) for r in by_load}
        best = max(matched.values())
        if best > 0 and best * self.block_size >= self.match_rate_threshold * request.num_tokens:
            first = [r for r in by_load if matched[r] == best]
        else:
            fewest = min(self.index.num_blocks(r) for r in by_load)
            first = [r for r in by_load if self.index.num_blocks(r) == fewest]
        rest = [r for r in by_load if r not in first]
        return [first] + ([rest] if rest else [])
