"""Ingress: the Serve ingress deployment (FastAPI, OpenAI-compatible).

Runs in the ingress replica(s). It owns the base tokenizer (every role's prompt is built with
the base chat template, so the shared context is a common token prefix) and the P/D pipeline
over handles to the prefill and decode deployments. The HTTP surface itself is
router_service.api.build_api; this class only wires it to Serve.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from ray import serve

from contract.config import AppConfig
from contract.roles import ServedRole
from router_service.admission_gate import AdmissionGate
from router_service.api import build_api
from router_service.guard import guard_from_config
from router_service.metering import MeteredBackend, RequestMetricsMiddleware
from router_service.metrics import IngressMetrics
from router_service.pd_backend import Pool, PrefillShareBackend, StageTimeouts
from router_service.pool_stats import deployment_stats
from router_service.role_table import RoleTable, ServingFacts, resolve_roles
from router_service.serve_clients import ServeDecodeClient, ServePrefillClient

log = logging.getLogger(__name__)

INGRESS_DEPLOYMENT = "ingress"


@serve.ingress()
class Ingress:
    def __init__(self, app_config: dict[str, Any], roles: list[ServedRole], base_model: str,
                 max_model_len: int, prefill_handles: dict[str, Any],
                 decode_handles: dict[str, Any], block_sizes: dict[str, int]) -> None:
        from transformers import AutoTokenizer

        self.config = AppConfig.model_validate(app_config)
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        # vLLM's tool parsers (and xgrammar) load here, not on the first request with tools.
        import vllm.parser  # noqa: F401
        prefill = {name: Pool(ServePrefillClient(h, name), block_sizes[name])
                   for name, h in prefill_handles.items()}
        decode = {name: Pool(ServeDecodeClient(h, name), block_sizes[name])
                  for name, h in decode_handles.items()}
        t = self.config.timeouts
        # The roles come again as user_config (reconfigure, below), which replaces these.
        self.roles = RoleTable(roles)
        self.facts = ServingFacts(
            base_model, frozenset(prefill_handles), frozenset(decode_handles),
            self.config.lora_pool.max_lora_rank if self.config.lora_pool else None)
        self.backend = PrefillShareBackend(
            self.roles, prefill, decode,
            StageTimeouts(t.prefill_s, t.kv_pull_s, t.first_token_s, t.request_s),
            max_retries=self.config.routing.max_retries,
        )
        self.max_model_len = max_model_len
        self.prefill_handles = prefill_handles
        self.decode_handles = decode_handles
        # Reads the API keys (config, env var, Secret file) now: a bad or missing key fails the
        # replica at start, not at its first request.
        self.guard = guard_from_config(self.config.auth, self.config.limits,
                                       [r.name for r in roles])

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this after __init__ and on every deploy that changes only the ingress'
        user_config: the role table is swapped in place (router_service/role_table.py). A
        rejected role is logged and listed at /admin/roles; the others serve. An unusable list
        raises, and Serve keeps this replica's current roles."""
        roles, rejected = resolve_roles(user_config, self.facts)
        if not roles:
            raise ValueError(f"no servable role in user_config: {rejected}")
        before = set(self.roles.names())
        self.roles.replace(roles, rejected)
        now = set(self.roles.names())
        log.info("roles: %s (added %s, removed %s)", sorted(now), sorted(now - before),
                 sorted(before - now))
        for r in rejected:
            log.error("role %s rejected: %s", r.name, r.reason)

    def __serve_build_asgi_app__(self) -> Any:
        metrics = IngressMetrics(replica=serve.get_replica_context().replica_id.unique_id)
        limits = self.config.limits
        gated = AdmissionGate(self.backend, limits.max_inflight, limits.retry_after_s)
        app = build_api(MeteredBackend(gated, metrics), self.roles, self.tokenizer,
                        self.max_model_len, self.config.routing.session_header,
                        guard=self.guard, max_messages=self.config.limits.max_messages)
        app.add_middleware(RequestMetricsMiddleware, sink=metrics)

        @app.get("/stats")
        async def stats() -> dict[str, Any]:
            """Engine counters (prefix-cache hits, KV transfers) per deployment, summed over
            every live replica, each replica's own under ``replicas`` (pool_stats.py)."""
            out: dict[str, Any] = {"retries": self.backend.retries,
                                   "retries_by_reason": dict(self.backend.retries_by_reason),
                                   "prefill": {}, "decode": {}}
            pools = [(kind, name, h) for kind, handles in (("prefill", self.prefill_handles),
                                                           ("decode", self.decode_handles))
                     for name, h in handles.items()]
            answers = await asyncio.gather(*(deployment_stats(h) for _, _, h in pools))
            for (kind, name, _), answer in zip(pools, answers):
                out[kind][name] = answer
            return out

        @app.get("/admin/roles")
        async def admin_roles() -> dict[str, Any]:
            """What this replica serves and what it refused of the last roles update (behind
            the API keys like every route when auth is on)."""
            return {"roles": [dataclasses.asdict(r) for r in self.roles.roles()],
                    "rejected": [dataclasses.asdict(r) for r in self.roles.rejected]}

        return app
