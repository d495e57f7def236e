"""The routing policies by the names the config uses (contract/routing_policies.py).

Pure: the request router (routing/serve_router.py), the routing simulator and the benchmark
build policies from here, never from a list of their own.
"""

from __future__ import annotations

from collections.abc import Callable

from contract.routing_policies import ROUTING_POLICIES
from routing.baselines import (
    LeastLoadedPolicy,
    PowerOfTwoPolicy,
    PrefixAffinityPolicy,
    SessionStickyPolicy,
)
from routing.interface import RoutingPolicy
from routing.policy import PrefixLocalityPolicy, RoutingPolicyConfig

PolicyFactory = Callable[[RoutingPolicyConfig], RoutingPolicy]

POLICIES: dict[str, PolicyFactory] = {
    "prefix_locality": PrefixLocalityPolicy,
    "session_sticky": lambda c: SessionStickyPolicy(c.block_size, c.index_capacity_blocks),
    "power_of_two": lambda c: PowerOfTwoPolicy(c.block_size, c.index_capacity_blocks),
    "prefix_affinity": lambda c: PrefixAffinityPolicy(c.block_size, c.index_capacity_blocks),
    "least_loaded": lambda c: LeastLoadedPolicy(c.block_size, c.index_capacity_blocks),
}

if list(POLICIES) != list(ROUTING_POLICIES):
    raise ImportError("routing/registry.py and contract/routing_policies.py list different policies")


def make_policy(name: str, config: RoutingPolicyConfig) -> RoutingPolicy:
    if name not in POLICIES:
        raise ValueError(f"unknown routing policy {name!r}; one of {sorted(POLICIES)}")
    return POLICIES[name](config)
