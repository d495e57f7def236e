"""Routing-decision counters through Ray's metrics API (they reach Prometheus with Ray's own).
Runs in the ingress process, inside the request router."""

from __future__ import annotations

from ray.util.metrics import Counter


class RoutingMetrics:
    def __init__(self, deployment: str) -> None:
        self.deployment = deployment
        self._decisions = Counter(
            "prefillshare_routing_decisions",
            description="Routing decisions by kind: affinity, prefix, fallback, load, failover.",
            tag_keys=("deployment", "decision"),
        )

        self._sent = Counter(
            "prefillshare_routing_sent",
            description="Requests this router sent to each replica (the load spread it made).",
            tag_keys=("deployment", "replica"),
        )
        self._kv_event_blocks = Counter(
            "prefillshare_routing_kv_event_blocks",
            description="Prefix-index blocks learned (added) or forgotten (removed) from the "
                        "engines' KV cache events.",
            tag_keys=("deployment", "change"),
        )
        self.sent_by_replica: dict[str, int] = {}  # the same, readable in process
        self.kv_event_changes = {"added": 0, "removed": 0}

    def decision(self, kind: str) -> None:
        self._decisions.inc(1, tags={"deployment": self.deployment, "decision": kind})

    def sent(self, replica: str) -> None:
        self.sent_by_replica[replica] = self.sent_by_replica.get(replica, 0) + 1
        self._sent.inc(1, tags={"deployment": self.deployment, "replica": replica})

    def kv_event_blocks(self, added: int, removed: int) -> None:
        for change, n in (("added", added), ("removed", removed)):
            if n:
                self.kv_event_changes[change] += n
                self._kv_event_blocks.inc(n, tags={"deployment": self.deployment, "change": change})
