"""Per-replica engine metrics through Ray's metrics API (exported as ``ray_<name>``, counters
with ``_total``): prefix-cache lookups and hits, KV in use, queue depth, KV transfers (count,
bytes, time, failures), and at decode the prompt tokens pulled vs reused locally. Labels:
pool, kind (prefill or decode) and replica (the engine id). Runs in the replica process; fed
from EngineCounters after every engine step that reports stats.

vLLM's own engine metrics (``ray_vllm_*``: TTFT, inter-token latency, queue, KV usage, NIXL
transfer histograms ...) come from vLLM's RayPrometheusStatLogger: see vllm_stat_loggers().
"""

from __future__ import annotations

from typing import Any

from ray.util.metrics import Counter, Gauge

from vllm_runtime.engine_stats import EngineCounters
from vllm_runtime.held_gauges import HeldGauges

_TAGS = ("pool", "kind", "replica")

# Prometheus names (before Ray's ``ray_`` prefix); the dashboard test checks against them.
HIT_RATIO = "prefillshare_prefix_cache_hit_ratio"
PREFIX_QUERIES = "prefillshare_prefix_cache_queries"
PREFIX_HITS = "prefillshare_prefix_cache_hits"
KV_USAGE = "prefillshare_kv_cache_usage"
QUEUE_DEPTH = "prefillshare_engine_queue_depth"
KV_TRANSFERS = "prefillshare_kv_transfers"
KV_TRANSFER_FAILURES = "prefillshare_kv_transfer_failures"
KV_BYTES = "prefillshare_kv_transfer_bytes"
KV_SECONDS = "prefillshare_kv_transfer_seconds"
DECODE_PROMPT_TOKENS = "prefillshare_decode_prompt_tokens"
NAMES = (HIT_RATIO, PREFIX_QUERIES, PREFIX_HITS, KV_USAGE, QUEUE_DEPTH, KV_TRANSFERS,
         KV_TRANSFER_FAILURES, KV_BYTES, KV_SECONDS, DECODE_PROMPT_TOKENS)

# EngineCounters field -> the counter it feeds (each publish adds the increase since the last).
_COUNTED = {
    "prefix_queries": (PREFIX_QUERIES, "Prompt tokens looked up in this engine's prefix cache."),
    "prefix_hits": (PREFIX_HITS, "Of those, tokens found in the prefix cache."),
    "kv_transfers": (KV_TRANSFERS, "NIXL KV transfers (pulls) completed."),
    "kv_failed_transfers": (KV_TRANSFER_FAILURES, "NIXL KV transfers that failed."),
    "kv_bytes": (KV_BYTES, "Bytes of KV pulled over NIXL."),
    "kv_transfer_s": (KV_SECONDS, "Time spent in NIXL KV transfers."),
}


class EngineMetrics:
    def __init__(self, pool: str, kind: str, replica: str) -> None:
        self.tags = {"pool": pool, "kind": kind, "replica": replica}
        self._hit_ratio = Gauge(HIT_RATIO, tag_keys=_TAGS,
                                description="Prompt tokens found in this engine's prefix cache / "
                                "looked up, since the engine started.")
        self._usage = Gauge(KV_USAGE, description="Fraction of KV blocks in use.", tag_keys=_TAGS)
        self._queue = Gauge(QUEUE_DEPTH, tag_keys=_TAGS,
                            description="Requests running plus waiting in the engine.")
        self._counters = {field: Counter(name, description=text, tag_keys=_TAGS)
                          for field, (name, text) in _COUNTED.items()}
        self._kv_tokens = Counter(DECODE_PROMPT_TOKENS, tag_keys=(*_TAGS, "source"),
                                  description="Decode prompt tokens by source: pulled or reused.")
        self._last = EngineCounters()
        self._gauges = HeldGauges()  # set on change, held while idle

    def publish(self, c: EngineCounters) -> None:
        """Every step, not throttled: a throttle drops the last steps of a burst (the engine
        then goes idle and reports nothing more), which left counters behind and queue depth
        stuck at its busy value. Ray aggregates in-process: ~60 us per step for all of them
        (measured in a Ray actor on the 2-core dev box), against 10-50 ms per CPU step."""
        self._gauges.set(self._hit_ratio, c.prefix_hit_ratio, self.tags)
        self._gauges.set(self._usage, c.kv_cache_usage, self.tags)
        self._gauges.set(self._queue, c.running + c.waiting, self.tags)
        last = self._last
        for field, counter in self._counters.items():
            increase = getattr(c, field) - getattr(last, field)
            if increase > 0:  # Ray counters raise on 0
                counter.inc(increase, tags=self.tags)
        if c.connector_hits > last.connector_hits:
            self._kv_tokens.inc(c.connector_hits - last.connector_hits,
                                tags={**self.tags, "source": "pulled"})
        if c.prefix_hits > last.prefix_hits and self.tags["kind"] == "decode":
            self._kv_tokens.inc(c.prefix_hits - last.prefix_hits, tags={**self.tags, "source": "reused"})
        self._last = EngineCounters(**{k: getattr(c, k) for k in c.__dataclass_fields__})


def vllm_stat_loggers() -> list[Any]:
    """vLLM's own metrics through Ray (``ray_vllm_*``, labelled model_name, engine and the Serve
    ReplicaId), as a stat-logger factory for AsyncLLM; none outside a Ray worker, where Ray
    metrics would go nowhere. With it AsyncLLM skips its prometheus_client logger."""
    import ray

    if not ray.is_initialized():
        return []
    from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

    return [RayPrometheusStatLogger]
