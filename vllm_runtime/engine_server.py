"""EngineServer: what the prefill and decode servers share: one EngineHost in the replica,
its metrics, an in-flight count, the leak probe, stats and the routing stats Serve polls.
Runs in a Serve replica process."""

from __future__ import annotations

import dataclasses
from typing import Any

from contract.wire import ReplicaProbe
from vllm_runtime.admission import AdmissionLimits, waiting_requests
from vllm_runtime.engine_args import EngineSpec
from vllm_runtime.engine_host import EngineHost
from vllm_runtime.engine_metrics import EngineMetrics
from vllm_runtime.replica_identity import replica_engine_id, replica_rank, replica_unique_id


class EngineServer:
    kind = "engine"  # "prefill" or "decode" in subclasses: names engine ids and metrics

    def __init__(self, spec: EngineSpec, pool: str, core_offset: int = 0,
                 admission: AdmissionLimits = AdmissionLimits()) -> None:
        self.pool = pool
        self.admission = admission
        # vLLM labels its own metrics (ray_vllm_*) model_name=served_model_name: naming the
        # deployment (prefill-<pool>, decode-<pool>) makes them per pool; NIXL's handshake
        # hashes the model path, not this name.
        spec = dataclasses.replace(spec, engine_id=replica_engine_id(self.kind, pool),
                                   served_model_name=spec.served_model_name or f"{self.kind}-{pool}")
        self.metrics = EngineMetrics(pool, self.kind, spec.engine_id)
        self.engine = EngineHost(spec, core_index=core_offset + replica_rank(),
                                 on_stats=self.metrics.publish)
        self.inflight = 0
        self.refused = 0  # requests admission control turned away

    def admit(self) -> None:
        """Raises the 503 of admission control (vllm_runtime/admission.py) when this engine
        is past its pool's limits; called before a request enters the engine."""
        c = self.engine.counters
        waiting = waiting_requests(self.inflight, self.engine.spec.options.max_num_seqs, c.waiting)
        refusal = self.admission.refusal(waiting, c.kv_cache_usage)
        if refusal is not None:
            self.refused += 1
            raise refusal

    async def all_blocks_free(self, probe: ReplicaProbe = ReplicaProbe()) -> bool:
        """The request router pins a probe to ``probe.route.target_replica`` (a Serve replica
        id), so a caller can ask every replica in turn (bench/replicas.py)."""
        return await self.engine.all_blocks_free()

    async def stats(self, probe: ReplicaProbe = ReplicaProbe()) -> dict[str, Any]:
        return self.report()

    def report(self) -> dict[str, Any]:
        return {"pool": self.pool, "inflight": self.inflight, "refused": self.refused,
                "replica": replica_unique_id(),
                **self.engine.report()}

    def record_routing_stats(self) -> dict[str, Any]:
        """Published to the request router every request_routing_stats_period_s. Serve's
        replica actor also answers it when called directly, which is how GET /stats reads
        every replica's full report (router_service/pool_stats.py)."""
        c = self.engine.counters
        return {"inflight": self.inflight, "kv_cache_usage": c.kv_cache_usage,
                "waiting": c.waiting, "prefix_hit_ratio": c.prefix_hit_ratio,
                "requests_finished": self.engine.requests_finished, "report": self.report()}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
