"""The Serve replicas of a running PrefillShare app, one by one: list them, kill one, probe
each (KV blocks free? memory?) and wait for Serve to replace the dead.

Ray glue for the fault run and the soak (bench/fault_run.py, bench/soak.py); runs in the Ray
driver process that started the app (bench/running_app.py). A replica is its Serve id, the
tail of its actor name ``SERVE_REPLICA::<app>#<deployment>#<id>``. Engine probe methods take a
``ReplicaProbe`` (contract/wire.py) whose target the request router honours
(routing/serve_router.py), so every replica is asked, not one per deployment.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from contract.wire import ReplicaProbe
from router_service.pool_stats import REPLICA_PREFIX, parse_replica_actor_name


@dataclass(frozen=True)
class Replica:
    app: str
    deployment: str
    replica_id: str

    @property
    def actor_name(self) -> str:
        return f"{REPLICA_PREFIX}{self.app}#{self.deployment}#{self.replica_id}"

    @property
    def is_engine(self) -> bool:
        return self.deployment.startswith(("prefill-", "decode-"))


def parse_replica_name(name: str) -> Replica | None:
    parsed = parse_replica_actor_name(name)
    return None if parsed is None else Replica(*parsed)


def live_replicas(app: str) -> list[Replica]:
    """Replicas whose actors are alive right now (a killed actor's name is freed at once)."""
    import ray

    out = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        r = parse_replica_name(entry["name"])
        if r is not None and r.app == app:
            out.append(r)
    return sorted(out, key=lambda r: (r.deployment, r.replica_id))


def by_deployment(replicas: Iterable[Replica]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in replicas:
        out.setdefault(r.deployment, []).append(r.replica_id)
    return out


def routing_stats(app: str, deployment: str, timeout_s: float = 60) -> dict[str, dict[str, Any]]:
    """replica id -> the stats each live replica of `deployment` reports to the request router
    (the Serve replica actor's record_routing_stats: its engine's own counters)."""
    import ray

    out = {}
    for r in live_replicas(app):
        if r.deployment == deployment:
            actor = ray.get_actor(r.actor_name, namespace="serve")
            out[r.replica_id] = ray.get(actor.record_routing_stats.remote(), timeout=timeout_s)
    return out


def kill(replica: Replica) -> None:
    """Kill the replica's actor (no restart: Serve itself must notice and replace it)."""
    import ray

    ray.kill(ray.get_actor(replica.actor_name, namespace="serve"), no_restart=True)


def _process_tree_rss(_actor: Any) -> dict[str, Any]:
    """Runs inside the replica actor (via __ray_call__): its pid, the RSS of it and its
    children (vLLM's EngineCore and workers), and that RSS by process kind."""
    import os

    from vllm_runtime.engine_host import process_tree_rss_parts

    parts = process_tree_rss_parts()
    return {"pid": float(os.getpid()), "rss_mib": sum(parts.values()), "parts": parts}


def replica_memory(replicas: Iterable[Replica], timeout_s: float = 30) -> dict[str, dict[str, Any]]:
    """actor name -> {pid, rss_mib, parts, served}; replicas that do not answer are left out.
    ``served`` is an engine replica's finished request count (0 while its engine is still
    starting, None for replicas without an engine): a memory clock should start when a
    replica serves, not while its engine loads."""
    import ray

    refs, served_refs = {}, {}
    for r in replicas:
        try:
            actor = ray.get_actor(r.actor_name, namespace="serve")
        except ValueError:
            continue
        refs[r.actor_name] = actor.__ray_call__.remote(_process_tree_rss)
        if r.is_engine:
            served_refs[r.actor_name] = actor.record_routing_stats.remote()
    out = {}
    for name, ref in refs.items():
        try:
            out[name] = ray.get(ref, timeout=timeout_s)
        except Exception:  # died in between, or too busy to answer in time
            continue
        out[name]["served"] = None
        if name in served_refs:
            try:
                stats = ray.get(served_refs[name], timeout=timeout_s)
                out[name]["served"] = int(stats.get("requests_finished", 0))
            except Exception:  # still constructing its engine: not serving yet
                out[name]["served"] = 0
    return out


def probe(handle: Any, method: str, replica_id: str, timeout_s: float = 30) -> Any:
    """Call an engine probe method on one replica (blocking); raises if it does not answer."""
    return getattr(handle, method).remote(ReplicaProbe.of(replica_id)).result(timeout_s=timeout_s)


def wait_blocks_free(handle: Any, replica_id: str, timeout_s: float,
                     interval_s: float = 2.0) -> bool:
    """True once the replica's engine holds no KV block (vLLM's prefix-cache reset succeeds
    only then); False if it still holds some after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if probe(handle, "all_blocks_free", replica_id):
                return True
        except Exception:  # a replica still starting, or a probe that timed out: ask again
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def wait_replaced(app: str, before: dict[str, list[str]], killed: list[Replica],
                  timeout_s: float, healthy: Any = None) -> dict[str, Any]:
    """Wait until every deployment has its replica count again with none of the killed ids,
    and (if given) ``healthy()`` is true. Returns {replaced: [new ids...], seconds, ok}."""
    t0 = time.monotonic()
    killed_ids = {k.replica_id for k in killed}
    while True:
        now = by_deployment(live_replicas(app))
        counts_ok = all(len(now.get(d, [])) >= len(ids) for d, ids in before.items())
        none_dead = not killed_ids & {i for ids in now.values() for i in ids}
        if counts_ok and none_dead and (healthy is None or healthy()):
            new = sorted({(d, i) for d, ids in now.items() for i in ids}
                         - {(d, i) for d, ids in before.items() for i in ids})
            return {"ok": True, "seconds": time.monotonic() - t0,
                    "new_replicas": [f"{d}#{i}" for d, i in new]}
        if time.monotonic() - t0 > timeout_s:
            return {"ok": False, "seconds": time.monotonic() - t0, "live": now}
        time.sleep(2)


def serve_app_running(app: str) -> bool:
    from ray import serve

    status = serve.status().applications.get(app)
    return status is not None and str(status.status).endswith("RUNNING")


def live_routers(deployment: str | None = None) -> list[Any]:
    """The request routers of this process (what does my index hold?), for tests. Found by a
    heap walk: Serve builds them out of sight (a registry filled in initialize_state stayed
    empty when read from the caller's thread)."""
    import gc

    from routing.serve_router import PrefixLocalityRequestRouter

    return [o for o in gc.get_objects() if isinstance(o, PrefixLocalityRequestRouter)
            and hasattr(o, "metrics") and (deployment is None or o.metrics.deployment == deployment)]
