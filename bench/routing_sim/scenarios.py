"""The scenarios and policies of the routing evaluation (docs/routing.md).

Calibrated so that the pool is busy but not saturated when calls hit the prefix cache, and
near saturation when they miss: the regime the paper measures, where routing decides p95.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from bench.routing_sim.sim_replica import ServiceModel
from bench.routing_sim.simulation import ClusterEvent, Scenario
from bench.routing_sim.workload import WorkloadConfig
from routing.interface import RoutingPolicy
from routing.policy import RoutingPolicyConfig
from routing.registry import POLICIES, make_policy

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
    """Every registered policy, plus ours with the session home ranked before the prefix."""
    cfg = RoutingPolicyConfig(block_size=service.block_size,
                              index_capacity_blocks=service.kv_capacity_blocks)
    home_first = dataclasses.replace(cfg, prefer_prefix_over_session=False)
    made: dict[str, Callable[[], RoutingPolicy]] = {
        name: functools.partial(make_policy, name, cfg) for name in POLICIES}
    made["prefix_locality_home_first"] = functools.partial(make_policy, "prefix_locality", home_first)
    return made
