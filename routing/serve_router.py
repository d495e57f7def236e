"""PrefixLocalityRequestRouter: the Ray Serve glue around a pure routing policy.

Lives in the CALLER's process (the ingress replica), one per deployment handle, which is why
session homes are rendezvous-hashed (every ingress replica computes the same home without
shared state). Serve calls ``choose_replicas`` per request and takes the least-queued replica
of the first ranked group that has capacity; the policy's groups are singletons except the
overloaded tail, so the first group is the pick.

Configured through ``RequestRouterConfig(request_router_kwargs=...)`` (deployments/app.py):
``policy`` names one of routing/registry.py; ``kv_events`` / ``kv_events_keep_sent_s`` fold the engines'
KV cache events (each prefill replica's ``kv_blocks`` routing stat, kv_event_feed.py) into the
policy's prefix index; the rest are RoutingPolicyConfig fields.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from contract.wire import RouteHints
from routing.decisions import classify_decision
from routing.interface import ReplicaLoad, RouteRequest
from routing.policy import RoutingPolicyConfig
from routing.registry import make_policy

log = logging.getLogger(__name__)

def route_hints_of(pending: PendingRequest | None) -> RouteHints:
    """The typed request of the call (contract.wire: PrefillRequest, DecodeRequest,
    ReplicaProbe) carries its RouteHints in ``route``; a call without one routes on load."""
    if pending is None:
        return RouteHints()
    for value in (*pending.args, *pending.kwargs.values()):
        hints = getattr(value, "route", None)
        if isinstance(hints, RouteHints):
            return hints
    return RouteHints()


def route_request_of(pending: PendingRequest | None) -> RouteRequest:
    """What the policy sees: the hints, the session id from the handle options (Serve's own
    session affinity field) or the hints, and Serve's request id."""
    hints = route_hints_of(pending)
    if pending is None:
        return RouteRequest("", None, (), 0)
    meta = pending.metadata
    return RouteRequest(
        request_id=meta.internal_request_id,
        session_id=meta.session_id or hints.session_id or None,
        block_hashes=hints.block_hashes,
        num_tokens=hints.num_tokens,
    )


class PrefixLocalityRequestRouter(RequestRouter):
    def initialize_state(self, policy: str = "prefix_locality", deployment: str = "",
                         kv_events: bool = False, kv_events_keep_sent_s: float = 30.0,
                         **config: Any) -> None:
        self.policy = make_policy(policy, RoutingPolicyConfig(**config))
        self.policy_name = policy
        self.kv_events = kv_events
        self.kv_events_keep_sent_s = kv_events_keep_sent_s
        self._kv_applied: dict[str, tuple[str, int]] = {}  # replica -> (epoch, version) folded in
        from routing.metrics import RoutingMetrics

        self.metrics = RoutingMetrics(deployment or "unknown")

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None,
                              ) -> list[list[RunningReplica]]:
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        target = route_hints_of(pending_request).target_replica
        if target is not None:
            # A probe of one replica (leak check, stats, fault injection): that one or none.
            return [[by_id[target]]] if target in by_id else []
        if self.kv_events:
            self.apply_kv_snapshots(candidate_replicas)
        loads = [ReplicaLoad(rid, self._queue_len(r)) for rid, r in by_id.items()]
        request = route_request_of(pending_request)
        ranked = self.policy.rank(loads, request)
        groups = [[by_id[i] for i in g if i in by_id] for g in ranked]
        groups = [g for g in groups if g]
        if pending_request is not None and groups:
            top = groups[0][0].replica_id.unique_id
            # Recorded at choice time: the pick is groups[0] unless that replica is at
            # max_ongoing_requests, and counting it now keeps a burst from piling onto it.
            self.policy.on_sent(top, request)
            self.metrics.decision(classify_decision(self.policy, loads, request, top))
        return groups or [candidate_replicas]

    def apply_kv_snapshots(self, replicas: Iterable[RunningReplica]) -> None:
        """Fold each replica's newest engine snapshot into the index, once per version. A
        replica without one (events off, too many blocks, not yet polled) keeps our record."""
        index = getattr(self.policy, "index", None)
        if index is None:
            return
        for r in replicas:
            snap = (getattr(r, "routing_stats", None) or {}).get("kv_blocks")
            if not snap or snap.get("blocks") is None:
                continue
            rid = r.replica_id.unique_id
            key = (snap["epoch"], snap["version"])
            if self._kv_applied.get(rid) == key:
                continue
            self._kv_applied[rid] = key
            added, removed = index.apply_engine_snapshot(rid, snap["blocks"],
                                                         self.kv_events_keep_sent_s)
            self.metrics.kv_event_blocks(added, removed)

    def _queue_len(self, replica: RunningReplica) -> int:
        cached = self._replica_queue_len_cache.get(replica.replica_id)
        return int(cached or 0)

    def on_send_request(self, replica_id: ReplicaID) -> None:
        super().on_send_request(replica_id)
        self.metrics.sent(replica_id.unique_id)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)
        self.policy.on_finished(replica_id.unique_id, internal_request_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.policy.on_replica_removed(replica_id.unique_id)
        self.metrics.decision("failover")

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        live = {r.replica_id.unique_id for r in replicas}
        gone = {rid.unique_id for rid in self.curr_replicas} - live
        super().update_replicas(replicas)
        for rid in gone:  # drained or replaced: its sessions move on
            self.policy.on_replica_removed(rid)
            self._kv_applied.pop(rid, None)

