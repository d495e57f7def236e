"""Prefill routing for PrefillShare: pure policy code (no Ray) and its simulator.

The Ray Serve RequestRouter adapter wraps ``PrefixLocalityPolicy``; the ingress tags each
request with ``prompt_block_hashes`` of its prompt. docs/routing.md has the evaluation.
"""

from __future__ import annotations

from routing.baselines import (
    LeastLoadedPolicy,
    PowerOfTwoPolicy,
    PrefixAffinityPolicy,
    SessionStickyPolicy,
)
from routing.block_hashes import extend_block_hashes, prompt_block_hashes
from routing.interface import ReplicaLoad, RouteRequest, RoutingPolicy
from routing.kv_events import KvEventTranslator
from routing.policy import PrefixLocalityPolicy, RoutingPolicyConfig
from routing.prefix_index import PrefixIndex

__all__ = [
    "KvEventTranslator", "LeastLoadedPolicy", "PowerOfTwoPolicy", "PrefixAffinityPolicy",
    "PrefixIndex", "PrefixLocalityPolicy", "ReplicaLoad", "RouteRequest", "RoutingPolicy",
    "RoutingPolicyConfig", "SessionStickyPolicy", "extend_block_hashes", "prompt_block_hashes",
]
