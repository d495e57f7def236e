"""Per-replica engine metrics through Ray's metrics API: prefix-cache hit ratio, KV in use,
queue depth, KV transferred, and at decode the prompt tokens pulled vs reused locally.
Runs in the replica process; fed from EngineCounters at most once per second."""

from __future__ import annotations

import time

from ray.util.metrics import Counter, Gauge

from vllm_runtime.engine_stats import EngineCounters

_TAGS = ("pool", "kind", "replica")


class EngineMetrics:
    def __init__(self, pool: str, kind: str, replica: str) -> None:
        self.tags = {"pool": pool, "kind": kind, "replica": replica}
        self._hit_ratio = Gauge("prefillshare_prefix_cache_hit_ratio",
                                description="Prompt tokens found in this engine's prefix cache / looked up.",
                                tag_keys=_TAGS)
        self._usage = Gauge("prefillshare_kv_cache_usage", description="Fraction of KV blocks in use.",
                            tag_keys=_TAGS)
        self._queue = Gauge("prefillshare_engine_queue_depth",
                            description="Requests running plus waiting in the engine.", tag_keys=_TAGS)
        self._kv_bytes = Counter("prefillshare_kv_transfer_bytes",
                                 description="Bytes of KV pulled over NIXL.", tag_keys=_TAGS)
        self._kv_seconds = Counter("prefillshare_kv_transfer_seconds",
                                   description="Time spent in NIXL KV transfers.", tag_keys=_TAGS)
        self._kv_tokens = Counter("prefillshare_decode_prompt_tokens",
                                  description="Decode prompt tokens by source: pulled or reused.",
                                  tag_keys=(*_TAGS, "source"))
        self._last = EngineCounters()
        self._last_publish = 0.0

    def publish(self, c: EngineCounters, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_publish < 1.0:
            return
        self._last_publish = now
        self._hit_ratio.set(c.prefix_hit_ratio, tags=self.tags)
        self._usage.set(c.kv_cache_usage, tags=self.tags)
        self._queue.set(c.running + c.waiting, tags=self.tags)
        last = self._last
        if c.kv_bytes > last.kv_bytes:
            self._kv_bytes.inc(c.kv_bytes - last.kv_bytes, tags=self.tags)
        if c.kv_transfer_s > last.kv_transfer_s:
            self._kv_seconds.inc(c.kv_transfer_s - last.kv_transfer_s, tags=self.tags)
        if c.connector_hits > last.connector_hits:
            self._kv_tokens.inc(c.connector_hits - last.connector_hits,
                                tags={**self.tags, "source": "pulled"})
        if c.prefix_hits > last.prefix_hits and self.tags["kind"] == "decode":
            self._kv_tokens.inc(c.prefix_hits - last.prefix_hits, tags={**self.tags, "source": "reused"})
        self._last = EngineCounters(**{k: getattr(c, k) for k in c.__dataclass_fields__})
