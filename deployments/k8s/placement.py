"""Which worker group hosts which engine deployment, and the Serve config (serveConfigV2) that
makes Ray put them there.

The placement goes into the app's own args: each engine pool gets `resources:
{nodepool_<group>: 1}` (and `num_gpus`), which deployments/app.py passes to Serve as
ray_actor_options. Only the group's pods advertise that resource, so replicas land on its
nodes, and pending replicas make the Ray autoscaler grow exactly that group. The placed args are
validated again by AppConfig: serveConfigV2 is config.yaml's application, never a copy of it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from contract.config import AppConfig, PoolOptions
from contract.roles import LORA_POOL
from deployments.k8s.cluster import ClusterConfig, ServeAutoscaling, WorkerGroup, pool_resource
from deployments.k8s.pods import SERVE_PORT
from deployments.plan import engine_pools
from deployments.serve_config import IMPORT_PATH, ServeFile


@dataclass(frozen=True)
class PlacedDeployment:
    deployment: str  # the Serve deployment name (prefill-<pool>, decode-<role>, decode-lora)
    kind: str  # "prefill" or "decode"
    group: str
    options: PoolOptions
    autoscaling: dict[str, Any]  # Serve autoscaling_config


@dataclass(frozen=True)
class GroupPlan:
    """One worker group as rendered: its pool resource and how many pods it starts with."""

    name: str
    spec: WorkerGroup
    deployments: tuple[str, ...]
    replicas: int
    min_workers: int


def place(app: AppConfig, cluster: ClusterConfig) -> tuple[PlacedDeployment, ...]:
    pools = engine_pools(app)
    unknown = sorted(set(cluster.placement) - set(pools))
    if unknown:
        raise ValueError(f"placement: no engine deployment named {unknown} (have {sorted(pools)})")
    unknown = sorted(set(cluster.autoscaling_overrides) - set(pools))
    if unknown:
        raise ValueError(f"autoscaling_overrides: no engine deployment named {unknown}")
    placed = []
    for name, options in pools.items():
        kind = "prefill" if name.startswith("prefill-") else "decode"
        default = cluster.prefill_group if kind == "prefill" else cluster.decode_group
        group = cluster.placement.get(name, default)
        scaling = cluster.autoscaling_overrides.get(name, cluster.serve_autoscaling)
        placed.append(PlacedDeployment(name, kind, group, options,
                                       _autoscaling_config(name, options, scaling)))
    _check_separate_pools(placed)
    return tuple(placed)


def _autoscaling_config(name: str, options: PoolOptions, s: ServeAutoscaling) -> dict[str, Any]:
    low = options.replicas if s.min_replicas is None else s.min_replicas
    if s.max_replicas < max(low, 1):
        raise ValueError(f"{name}: autoscaling max_replicas ({s.max_replicas}) is below "
                         f"min_replicas ({low})")
    target = s.target_ongoing_requests or max(1.0, options.max_ongoing_requests / 2)
    if target > options.max_ongoing_requests:
        raise ValueError(f"{name}: target_ongoing_requests ({target}) exceeds the pool's "
                         f"max_ongoing_requests ({options.max_ongoing_requests})")
    return {"min_replicas": low, "initial_replicas": max(low, 1), "max_replicas": s.max_replicas,
            "target_ongoing_requests": target, "upscale_delay_s": s.upscale_delay_s,
            "downscale_delay_s": s.downscale_delay_s}


def _check_separate_pools(placed: list[PlacedDeployment]) -> None:
    kinds: dict[str, set[str]] = {}
    for p in placed:
        kinds.setdefault(p.group, set()).add(p.kind)
    mixed = sorted(g for g, k in kinds.items() if len(k) > 1)
    if mixed:
        raise ValueError(f"worker group(s) {mixed} would host both prefill and decode engines: "
                         "give prefill and decode separate node pools")


def group_plans(placed: tuple[PlacedDeployment, ...], cluster: ClusterConfig) -> list[GroupPlan]:
    """Every worker group that hosts a deployment, sized so that the deployments' initial
    replicas fit and their max_replicas can be reached."""
    plans = []
    for name, spec in cluster.worker_groups.items():
        here = [p for p in placed if p.group == name]
        if not here:
            continue
        initial = sum(p.autoscaling["initial_replicas"] for p in here)
        peak = sum(p.autoscaling["max_replicas"] for p in here)
        if spec.workers_for(peak) > spec.max_workers:
            raise ValueError(
                f"worker group {name!r}: its deployments may scale to {peak} engines, which needs "
                f"{spec.workers_for(peak)} pods of {spec.engine_slots} slot(s); max_workers is "
                f"{spec.max_workers}")
        low = spec.min_workers if spec.min_workers is not None else spec.workers_for(
            sum(p.autoscaling["min_replicas"] for p in here))
        replicas = max(low, spec.workers_for(initial))
        plans.append(GroupPlan(name, spec, tuple(p.deployment for p in here), replicas, low))
    return plans


def placed_app_args(sf: ServeFile, placed: tuple[PlacedDeployment, ...],
                    cluster: ClusterConfig) -> dict[str, Any]:
    """config.yaml's args, plus each engine pool's pool resource and GPUs; re-validated."""
    raw_app = _our_application(sf)
    args = copy.deepcopy(raw_app.get("args") or {})
    for p in placed:
        pool = _pool_section(args, p.deployment)
        group = cluster.worker_groups[p.group]
        pool["resources"] = {**pool.get("resources", {}), pool_resource(p.group): 1}
        if group.gpus_per_engine:
            pool["num_gpus"] = group.gpus_per_engine
    checked = AppConfig.model_validate(args)  # the app's own schema, as `serve deploy` will
    for p in placed:
        opts = engine_pools(checked)[p.deployment]
        assert opts.resources.get(pool_resource(p.group)) == 1, p.deployment
    return args


def _pool_section(args: dict[str, Any], deployment: str) -> dict[str, Any]:
    kind, _, name = deployment.partition("-")
    if kind == "prefill":
        # An absent prefill_pools means the default: one pool, `shared`.
        return args.setdefault("prefill_pools", {}).setdefault(name, {})
    if name == LORA_POOL and "lora_pool" in args:
        return args["lora_pool"]
    for role in args["roles"]:
        if role["name"] == name:
            return role.setdefault("decode_pool", {})
    raise KeyError(deployment)


def _our_application(sf: ServeFile) -> dict[str, Any]:
    return next(a for a in sf.raw["applications"] if a.get("import_path") == IMPORT_PATH)


def serve_config_v2(sf: ServeFile, placed: tuple[PlacedDeployment, ...],
                    cluster: ClusterConfig) -> dict[str, Any]:
    """The Serve config KubeRay deploys: config.yaml with the proxy on every pod address and
    the placed args; Serve autoscaling per engine deployment as deployment overrides."""
    config = copy.deepcopy(sf.raw)
    config["http_options"] = {**(config.get("http_options") or {}), "host": "0.0.0.0",
                              "port": SERVE_PORT}
    apps = []
    for app in config["applications"]:
        if app.get("import_path") == IMPORT_PATH:
            app = {**app, "args": placed_app_args(sf, placed, cluster)}
            overrides = {d["name"]: d for d in app.get("deployments") or []}
            for p in placed:
                # "auto" clears the replica count the app builder sets from `replicas`.
                overrides[p.deployment] = {**overrides.get(p.deployment, {}), "name": p.deployment,
                                           "num_replicas": "auto", "autoscaling_config": p.autoscaling}
            app["deployments"] = list(overrides.values())
        apps.append(app)
    config["applications"] = apps
    return config
