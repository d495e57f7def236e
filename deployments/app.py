"""The Serve application builder: ``import_path: deployments.app:build_app`` in config.yaml.

Runs where Serve builds the app (the `serve deploy` build task, or the caller of serve.run).
It validates the args against contract.config.AppConfig, plans the engines
(deployments.plan) and binds one Serve deployment per prefill pool, one per decode pool and
the ingress.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from contract.config import AppConfig, load_config
from decode_service.server import DecodeServer
from deployments.kv_compat import KvLayout, kv_blocks_in
from deployments.plan import DeploymentPlan, EnginePool, make_plan
from prefill_service.server import PrefillServer
from router_service.ingress import INGRESS_DEPLOYMENT, Ingress

# Engines take 30-70 s to start on a loaded 2-core box; Serve's default health timeouts
# would kill them mid-start.
_HEALTH = {"health_check_period_s": 10, "health_check_timeout_s": 60,
           "graceful_shutdown_timeout_s": 20}


def _router_config(cfg: AppConfig, policy: str, pool: EnginePool) -> RequestRouterConfig:
    r = cfg.routing
    engine = pool.spec.options
    # The index forgets roughly when the engine evicts: capacity = the engine's KV blocks.
    capacity = kv_blocks_in(engine.kv_cache_space_gib, engine.block_size,
                            KvLayout.of(pool.spec.model, engine.dtype))
    return RequestRouterConfig(
        request_router_class="routing.serve_router:PrefixLocalityRequestRouter",
        request_router_kwargs={
            "policy": policy, "deployment": pool.name, "block_size": engine.block_size,
            "load_relative_factor": r.load_bound, "load_absolute_threshold": r.load_absolute_threshold,
            "prefer_prefix_over_session": r.prefer_prefix_over_session,
            "index_capacity_blocks": capacity,
            "kv_events": r.kv_events, "kv_events_keep_sent_s": r.kv_events_keep_sent_s,
        },
        request_routing_stats_period_s=r.stats_period_s,
    )


def _engine_deployment(cls: type, pool: EnginePool, router: RequestRouterConfig) -> Any:
    actor_options: dict[str, Any] = {"num_cpus": pool.options.num_cpus}
    if pool.options.num_gpus:
        actor_options["num_gpus"] = pool.options.num_gpus
    if pool.options.resources:
        actor_options["resources"] = dict(pool.options.resources)
    return serve.deployment(cls).options(
        name=pool.name,
        num_replicas=pool.options.replicas,
        max_ongoing_requests=pool.options.max_ongoing_requests,
        ray_actor_options=actor_options,
        request_router_config=router,
        **_HEALTH,
    )


def bind_plan(cfg: AppConfig, plan: DeploymentPlan,
              decode_server: type[DecodeServer] = DecodeServer) -> Application:
    """``decode_server``: a subclass for test harnesses (bench/fault_injection.py)."""
    decode_policy = cfg.routing.decode_policy or (
        "prefix_locality" if cfg.decode_kv_mode == "reuse" else "least_loaded")
    prefill = {
        p.name: _engine_deployment(PrefillServer, p, _router_config(cfg, cfg.routing.prefill_policy, p))
        .bind(p.spec, p.pool, p.core_offset,
              kv_events_namespace=p.name if cfg.routing.kv_events else None,
              admission=p.admission)
        for p in plan.prefill
    }
    decode = {
        d.name: _engine_deployment(decode_server, d, _router_config(cfg, decode_policy, d))
        .bind(d.spec, d.pool, d.core_offset, d.lora_adapters, admission=d.admission)
        for d in plan.decode
    }
    # The API refuses prompts no engine on the path can hold.
    max_len = min(p.spec.options.max_model_len for p in (*plan.prefill, *plan.decode))
    # The roles also go as user_config: a deploy that changes only that reconfigures the
    # running ingress (roles added, replaced, removed) instead of restarting the app.
    ingress = serve.deployment(Ingress).options(
        name=INGRESS_DEPLOYMENT, num_replicas=cfg.ingress_replicas, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=1000, user_config=ingress_user_config(cfg),
    )
    block_sizes = {p.name: p.spec.options.block_size for p in (*plan.prefill, *plan.decode)}
    return ingress.bind(cfg.model_dump(mode="json"), list(plan.roles), plan.base_model, max_len,
                        prefill, decode, block_sizes)


def ingress_user_config(cfg: AppConfig) -> dict[str, Any]:
    return {"roles": [r.model_dump(mode="json", exclude_defaults=True) for r in cfg.roles]}


def build_app(args: dict[str, Any]) -> Application:
    cfg = load_config(args)
    return bind_plan(cfg, make_plan(cfg))
