"""The scenarios and policies of the routing evaluation (docs/routing.md).

Calibrated so that the pool is busy but not saturated when calls hit the prefix cache, and
near saturation when they miss: the regime the paper measures, where routing decides p95.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from router_service.routing.baselines import (
    LeastLoadedPolicy,
    PowerOfTwoPolicy,
    PrefixAffinityPolicy,
    SessionStickyPolicy,
)
from router_service.routing.interface import RoutingPolicy
from router_service.routing.policy import PrefixLocalityPolicy, RoutingPolicyConfig
from router_service.routing.sim_replica import ServiceModel
from router_service.routing.simulation import ClusterEvent, Scenario
from router_service.routing.workload import WorkloadConfig

SERVICE = ServiceModel()
BASE = WorkloadConfig()
SKEW = dataclasses.replace(BASE, heavy_fraction=0.15)


def scenarios(duration_s: float = BASE.duration_s, seed: int = 0) -> list[Scenario]:
    def wl(w: WorkloadConfig) -> WorkloadConfig:
        return dataclasses.replace(w, duration_s=duration_s, seed=seed,
                                   hot_start_s=min(w.hot_start_s, duration_s / 4))

    d = duration_s
    return [
        Scenario("uniform", wl(BASE)),
        Scenario("skew", wl(SKEW)),
        Scenario("hot_session", wl(dataclasses.replace(SKEW, hot_workflows=24))),
        Scenario("replica_death", wl(SKEW), events=(ClusterEvent(0.4 * d, "kill", "r1"),)),
        Scenario("scale_up_down", wl(SKEW), replicas=3,
                 events=(ClusterEvent(0.3 * d, "add", "r3"), ClusterEvent(0.6 * d, "drain", "r0"))),
        Scenario("two_ingress", wl(SKEW), routers=2),
    ]


def policies(service: ServiceModel = SERVICE) -> dict[str, Callable[[], RoutingPolicy]]:
    bs, cap = service.block_size, service.kv_capacity_blocks
    cfg = RoutingPolicyConfig(block_size=bs, index_capacity_blocks=cap)
    return {
        "prefix_locality": lambda: PrefixLocalityPolicy(cfg),
        "prefix_locality_home_first": lambda: PrefixLocalityPolicy(
            dataclasses.replace(cfg, prefer_prefix_over_session=False)),
        "session_sticky": lambda: SessionStickyPolicy(bs, cap),
        "power_of_two": lambda: PowerOfTwoPolicy(bs, cap, seed=0),
        "prefix_affinity": lambda: PrefixAffinityPolicy(bs, cap),
        "least_loaded": lambda: LeastLoadedPolicy(bs, cap),
    }
