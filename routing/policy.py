"""PrefixLocalityPolicy: session affinity + prefix locality + bounded load for the prefill pool.

Runs inside the router of each ingress replica (the Ray Serve RequestRouter adapter is a thin
wrapper; no Ray here). The paper pins a session to one prefill worker with no load bound and
no failover; this policy keeps that affinity while it is cheap and gives it up while it hurts:

1. A session's HOME is its rendezvous choice over the live replicas: a pure function of ids,
   so separate ingress replicas agree without shared state (see rendezvous.py).
2. Bounded load: a replica whose load exceeds max(load_absolute_threshold,
   load_relative_factor * mean load) is skipped for affinity and prefix preference. The request
   goes to the best prefix holder among the rest, then the least loaded. The session is NOT
   rehomed: once home is back under the bound, it again wins ties and takes the session's new
   chains. Only a dead or drained home moves it, to its next rendezvous choice.
3. Prefix: the replica with the longest matched chain in the PrefixIndex (our sends, plus KV
   events when wired) is the other preference: by default before home (ties go home), so a
   session stays where its newest KV is; ``prefer_prefix_over_session=False`` puts home first.
4. Load counts our own sends not yet visible in Serve's queue-length cache (load_tracker.py).

Deterministic: the same inputs and the same sequence of hooks give the same ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from routing.interface import ReplicaLoad, RouteRequest
from routing.load_tracker import LoadTracker
from routing.prefix_index import PrefixIndex
from routing.rendezvous import rendezvous_owner


@dataclass(frozen=True)
class RoutingPolicyConfig:
    block_size: int = 128
    """Tokens per KV block; must equal the prefill engines' block size (the hashes' size)."""

    load_absolute_threshold: float = 4.0
    """In-flight requests a replica may hold before the bound can apply at all: at low load a
    short queue at home costs less than re-prefilling a session's context elsewhere."""

    load_relative_factor: float = 1.5
    """A replica above this multiple of the mean load (over live replicas) is skipped for
    affinity. 1.0 is pure balancing; large values approach the paper's unbounded pinning."""

    prefer_prefix_over_session: bool = True
    """True: the replica holding the longest prefix of this request's chain first, home second
    (ties go home). A session then stays where its newest KV is: after a spill, after a scale
    up (the new replica takes new sessions; existing ones are not moved cold) and after a
    failover. False: home first, so a spilled call returns home as soon as home is under the
    bound and a scale up moves ~1/N of live sessions, each paying one cold prefill. True won in
    every scenario of docs/routing.md. With several ingress replicas and no KV events, each
    index sees only its own sends, so prefix-first can ping-pong a spilled session between two
    replicas (each move costs the tokens appended meanwhile, not the whole context)."""

    index_capacity_blocks: int = 50_000
    """Per-replica capacity of the prefix index in blocks; set it to the engine's KV pool
    (num_gpu_blocks) so that the index forgets roughly when the engine evicts."""

    min_prefix_blocks: int = 1
    """Shorter matches are ignored for preference: a one-block shared system prompt sits on
    every replica and should not steer traffic."""

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.index_capacity_blocks <= 0:
            raise ValueError("block_size and index_capacity_blocks must be positive")
        if self.load_relative_factor < 1.0:
            raise ValueError("load_relative_factor below 1 would mark every replica overloaded")
        if self.load_absolute_threshold < 0 or self.min_prefix_blocks < 1:
            raise ValueError("load_absolute_threshold >= 0 and min_prefix_blocks >= 1 required")


@dataclass(frozen=True)
class _Scored:
    """One candidate's view for one decision."""

    replica_id: str
    load: int
    tokens: int
    matched: int  # blocks


class PrefixLocalityPolicy:
    def __init__(self, config: RoutingPolicyConfig | None = None) -> None:
        self.config = config or RoutingPolicyConfig()
        self.index = PrefixIndex(self.config.index_capacity_blocks)
        self.tracker = LoadTracker()
        self._removed: set[str] = set()

    # ---- decision ----
    def rank(self, candidates: Sequence[ReplicaLoad], request: RouteRequest) -> list[list[str]]:
        live = [c for c in candidates if c.replica_id not in self._removed] or list(candidates)
        if not live:
            return []
        scored = [self._score(c, request) for c in live]
        bound = self.load_bound([s.load for s in scored])
        ok = [s for s in scored if s.load <= bound]
        over = [s for s in scored if s.load > bound]
        by_id = {s.replica_id: s for s in ok}

        preferred: list[str] = []
        home = self.home(request.session_id, [c.replica_id for c in live])
        best = self._best_prefix(ok, home)
        first, second = (best, home) if self.config.prefer_prefix_over_session else (home, best)
        for r in (first, second):
            if r is not None and r in by_id and r not in preferred:
                preferred.append(r)

        rest = sorted((s for s in ok if s.replica_id not in preferred),
                      key=lambda s: (-self._useful(s.matched), s.load, s.tokens, s.replica_id))
        groups = [[r] for r in preferred] + [[s.replica_id] for s in rest]
        if over:
            # Last resort, one group: Serve takes whichever is least queued among them.
            groups.append([s.replica_id for s in sorted(over, key=lambda s: (s.load, s.replica_id))])
        return groups

    def load_bound(self, loads: Sequence[int]) -> float:
        mean = sum(loads) / len(loads) if loads else 0.0
        return max(self.config.load_absolute_threshold, self.config.load_relative_factor * mean)

    def home(self, session_id: str | None, replica_ids: Sequence[str]) -> str | None:
        """The session's home among ``replica_ids`` minus removed ones (None without a session)."""
        if session_id is None:
            return None
        return rendezvous_owner(session_id, (r for r in replica_ids if r not in self._removed))

    def _score(self, c: ReplicaLoad, request: RouteRequest) -> _Scored:
        return _Scored(c.replica_id, self.tracker.load(c), self.tracker.tokens(c.replica_id),
                       self.index.match_length(c.replica_id, request.block_hashes))

    def _useful(self, matched: int) -> int:
        return matched if matched >= self.config.min_prefix_blocks else 0

    def _best_prefix(self, ok: Sequence[_Scored], home: str | None) -> str | None:
        useful = [s for s in ok if self._useful(s.matched) > 0]
        if not useful:
            return None
        # Ties go home first (keeps placement agreeing across ingress replicas), then to load.
        return min(useful, key=lambda s: (-s.matched, s.replica_id != home, s.load,
                                          s.replica_id)).replica_id

    # ---- hooks ----
    def on_sent(self, replica_id: str, request: RouteRequest) -> None:
        matched = self.index.match_length(replica_id, request.block_hashes)
        uncached = max(0, request.num_tokens - matched * self.config.block_size)
        self.tracker.add(request.request_id, replica_id, uncached)
        self.index.record_sent(replica_id, request.block_hashes)

    def on_finished(self, replica_id: str, request_id: str) -> None:
        self.tracker.finish(request_id)

    def on_replica_removed(self, replica_id: str) -> None:
        """Dead or draining: its sessions fall to their next rendezvous choice (only them),
        its index entries and in-flight counts go."""
        self._removed.add(replica_id)
        self.index.drop_replica(replica_id)
        self.tracker.drop_replica(replica_id)

    def on_replicas_changed(self, live_replica_ids: Sequence[str]) -> None:
        """Serve's update_replicas: forget replicas that left. Removed ids stay excluded even
        if a stale candidate list still names them (Serve never reuses a replica id)."""
        live = set(live_replica_ids)
        for r in (set(self.index.replicas()) | set(self.tracker.replicas())) - live:
            self.on_replica_removed(r)
