"""GET /stats for a pool of several replicas: every live replica's engine counters, and their
sum per deployment.

A Serve handle call reaches one replica, so the ingress asks each replica's actor directly: it
lists the deployment's live replicas from their Ray actor names
(``SERVE_REPLICA::<app>#<deployment>#<id>``) and calls each one's ``record_routing_stats``
(which carries the engine's full report). Pinned handle probes were tried first: from inside
the ingress they waited in Serve's router until a 10 s timeout. Before this, /stats
read whichever replica the router picked: with four prefill replicas, a quarter of the tokens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

REPLICA_PREFIX = "SERVE_REPLICA::"
# Per-replica facts that have no sum: the pool's value is their mean, their max (the slowest
# engine start), recomputed from the sums, or none at all.
AVERAGED = frozenset({"kv_cache_usage"})
LARGEST = frozenset({"start_s"})
NOT_SUMMED = frozenset({"pid", "prefix_hit_ratio"})


def parse_replica_actor_name(name: str) -> tuple[str, str, str] | None:
    """(app, deployment, replica id) of a Serve replica's actor name; None for other actors."""
    if not name.startswith(REPLICA_PREFIX):
        return None
    parts = name[len(REPLICA_PREFIX):].split("#")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def replica_ids(actor_names: Iterable[str], app: str, deployment: str) -> list[str]:
    """The Serve replica ids of ``deployment`` in ``app`` among these Ray actor names."""
    parsed = [parse_replica_actor_name(n) for n in actor_names]
    return sorted(p[2] for p in parsed if p is not None and p[:2] == (app, deployment))


def merge_replica_reports(reports: Mapping[str, dict[str, Any]],
                          missing: Iterable[str] = ()) -> dict[str, Any]:
    """One deployment's counters: numbers summed over its replicas (kv_cache_usage averaged,
    start_s the largest, the hit ratio recomputed from the sums), each replica's own report
    under ``replicas`` and the ids that did not answer under ``missing``."""
    merged: dict[str, Any] = {}
    numbers: dict[str, list[float]] = {}
    for report in reports.values():
        for key, value in report.items():
            if key in NOT_SUMMED:
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                numbers.setdefault(key, []).append(value)
            elif key in ("pool", "side", "model"):  # the same on every replica of a pool
                merged.setdefault(key, value)
    for key, values in numbers.items():
        merged[key] = (sum(values) / len(values) if key in AVERAGED
                       else max(values) if key in LARGEST else sum(values))
    queries = merged.get("prefix_queries", 0)
    merged["prefix_hit_ratio"] = merged.get("prefix_hits", 0) / queries if queries else 0.0
    merged["replicas"] = dict(reports)
    merged["missing"] = sorted(missing)
    return merged


def _live_actor_names() -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]


async def _replica_report(app: str, deployment: str, rid: str) -> dict[str, Any]:
    """The replica actor's own answer (its record_routing_stats, with the engine's report):
    a direct actor call, so no request router is in the way of reaching THIS replica."""
    import ray

    actor = await asyncio.to_thread(ray.get_actor, f"{REPLICA_PREFIX}{app}#{deployment}#{rid}",
                                    namespace="serve")
    return (await actor.record_routing_stats.remote())["report"]


async def deployment_stats(handle: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    """Every live replica of the handle's deployment, asked at once; a replica that does not
    answer within ``timeout_s`` (dying, or busy starting its engine) is listed as missing."""
    names = await asyncio.to_thread(_live_actor_names)
    app, deployment = handle.app_name, handle.deployment_name
    ids = replica_ids(names, app, deployment)
    answers = await asyncio.gather(
        *(asyncio.wait_for(_replica_report(app, deployment, rid), timeout_s) for rid in ids),
        return_exceptions=True)
    reports, missing = {}, []
    for rid, answer in zip(ids, answers):
        if isinstance(answer, BaseException):
            log.warning("stats: replica %s of %s did not answer: %r", rid, deployment, answer)
            missing.append(rid)
        else:
            reports[rid] = answer
    return merge_replica_reports(reports, missing)
