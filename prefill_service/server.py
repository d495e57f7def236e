"""PrefillServer: one vLLM engine with the frozen base model, a NIXL KV producer.

Runs in a Serve replica process (the builder in deployments/app.py turns the class into a
deployment). A prefill computes the prompt's KV with prefix caching on, keeps the blocks
leased for the decode engine's pull, and returns the kv_transfer_params that say where they
are. The one token it samples is discarded: the decoder samples the first output token itself.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from contract.wire import PrefillRequest, PrefillResult
from vllm_runtime.admission import AdmissionLimits
from vllm_runtime.engine_server import EngineServer


class PrefillServer(EngineServer):
    kind = "prefill"

    def __init__(self, spec: Any, pool: str, core_offset: int = 0,
                 kv_events_namespace: str | None = None,
                 admission: AdmissionLimits = AdmissionLimits()) -> None:
        """``kv_events_namespace`` (the ingress's block-hash namespace: this deployment's name)
        turns on vLLM's KV cache events: a feed bound before the engine starts learns what the
        engine stores and evicts, and ``record_routing_stats`` publishes it to the routers."""
        self.kv_feed = None
        if kv_events_namespace is not None:
            from vllm.config import KVEventsConfig

            from prefill_service.kv_event_feed import KvEventFeed
            from vllm_runtime.replica_env import node_host

            self.kv_feed = KvEventFeed(spec.options.block_size, kv_events_namespace, node_host())
            extra = {**spec.options.extra,
                     "kv_events_config": KVEventsConfig(**self.kv_feed.kv_events_config())}
            spec = dataclasses.replace(spec, options=spec.options.model_copy(update={"extra": extra}))
        super().__init__(spec, pool, core_offset, admission)

    def record_routing_stats(self) -> dict[str, Any]:
        stats = super().record_routing_stats()
        # Cumulative engine counters: per-replica hit ratio and load spread in bench and tests.
        c = self.engine.counters
        stats.update(prefix_queries=c.prefix_queries, prefix_hits=c.prefix_hits)
        if self.kv_feed is not None:
            stats["kv_blocks"] = self.kv_feed.state.snapshot()
        return stats

    async def prefill(self, request: PrefillRequest) -> PrefillResult:
        from vllm import SamplingParams

        self.admit()
        params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            extra_args={"kv_transfer_params": {"do_remote_decode": True}},
        )
        started = time.perf_counter()
        self.inflight += 1
        last = None
        try:
            async for out in self.engine.generate(list(request.prompt_token_ids), params,
                                                  request.request_id):
                last = out
        finally:
            self.inflight -= 1
        if last is None or last.kv_transfer_params is None:
            raise RuntimeError("prefill engine returned no kv_transfer_params")
        return PrefillResult(
            kv_transfer_params=dict(last.kv_transfer_params),
            num_prompt_tokens=len(request.prompt_token_ids),
            num_cached_tokens=int(last.num_cached_tokens or 0),
            prefill_s=time.perf_counter() - started,
            engine_id=self.engine.spec.engine_id,
        )
