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

from vllm_runtime.engine_args import EngineSpec
from vllm_runtime.engine_host import EngineHost
from vllm_runtime.engine_metrics import EngineMetrics
from vllm_runtime.replica_identity import replica_engine_id, replica_rank


@dataclasses.dataclass(frozen=True)
class PrefillResult:
    kv_transfer_params: dict[str, Any]
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens served from this engine's prefix cache
    prefill_s: float
    engine_id: str


class PrefillServer:
    def __init__(self, spec: EngineSpec, pool: str, core_offset: int = 0) -> None:
        self.pool = pool
        spec = dataclasses.replace(spec, engine_id=replica_engine_id("prefill", pool))
        self.metrics = EngineMetrics(pool, "prefill", spec.engine_id)
        self.engine = EngineHost(spec, core_index=core_offset + replica_rank(),
                                 on_stats=self.metrics.publish)
        self.inflight = 0

    async def prefill(self, request_id: str, prompt_token_ids: list[int],
                      block_hashes: list[int] | None = None) -> PrefillResult:
        """``block_hashes`` is read by the request router (prefix locality), not here."""
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            extra_args={"kv_transfer_params": {"do_remote_decode": True}},
        )
        started = time.perf_counter()
        self.inflight += 1
        last = None
        try:
            async for out in self.engine.generate(prompt_token_ids, params, request_id):
                last = out
        finally:
            self.inflight -= 1
        if last is None or last.kv_transfer_params is None:
            raise RuntimeError("prefill engine returned no kv_transfer_params")
        return PrefillResult(
            kv_transfer_params=dict(last.kv_transfer_params),
            num_prompt_tokens=len(prompt_token_ids),
            num_cached_tokens=int(last.num_cached_tokens or 0),
            prefill_s=time.perf_counter() - started,
            engine_id=self.engine.spec.engine_id,
        )

    async def all_blocks_free(self) -> bool:
        return await self.engine.all_blocks_free()

    async def stats(self) -> dict[str, Any]:
        return {"pool": self.pool, "inflight": self.inflight, **self.engine.report()}

    def record_routing_stats(self) -> dict[str, Any]:
        """Published to the request router every request_routing_stats_period_s."""
        c = self.engine.counters
        return {"inflight": self.inflight, "kv_cache_usage": c.kv_cache_usage,
                "waiting": c.waiting, "prefix_hit_ratio": c.prefix_hit_ratio}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
