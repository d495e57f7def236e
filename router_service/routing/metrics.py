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

    def decision(self, kind: str) -> None:
        self._decisions.inc(1, tags={"deployment": self.deployment, "decision": kind})
