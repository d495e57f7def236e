"""Prefill routing for PrefillShare: pure policy code (no Ray) and its simulator.

The Ray Serve RequestRouter adapter wraps ``PrefixLocalityPolicy``; the ingress tags each
request with ``prompt_block_hashes`` of its prompt. docs/routing.md has the evaluation.
"""

from __future__ import annotations

from router_service.routing.baselines import (
    LeastLoadedPolicy,
    PowerOfTwoPolicy,
    PrefixAffinityPolicy,
    SessionStickyPolicy,
)
from router_service.routing.block_hashes import extend_block_hashes, prompt_block_hashes
from router_service.routing.interface import ReplicaLoad, RouteRequest, RoutingPolicy
from router_service.routing.kv_events import KvEventTranslator
from router_service.routing.policy import PrefixLocalityPolicy, RoutingPolicyConfig
from router_service.routing.prefix_index import PrefixIndex

__all__ = [
    "KvEventTranslator", "LeastLoadedPolicy", "PowerOfTwoPolicy", "PrefixAffinityPolicy",
    "PrefixIndex", "PrefixLocalityPolicy", "ReplicaLoad", "RouteRequest", "RoutingPolicy",
    "RoutingPolicyConfig", "SessionStickyPolicy", "extend_block_hashes", "prompt_block_hashes",
]
