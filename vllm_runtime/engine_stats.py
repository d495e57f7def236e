"""Counters an engine replica publishes: prefix-cache hits and NIXL transfers.

vLLM hands every scheduler step's stats to the stat loggers given to AsyncLLM; ``EngineCounters``
is the running total a replica reports (``/stats``, routing stats, metrics). The logger class
is created by vLLM through a factory, so it writes into a counters object captured by closure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EngineCounters:
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0  # of those, tokens found
    connector_queries: int = 0  # prompt tokens offered by the KV connector (remote prefill)
    connector_hits: int = 0
    kv_transfers: int = 0
    kv_bytes: int = 0
    kv_transfer_s: float = 0.0
    kv_failed_transfers: int = 0
    kv_failed_handshakes: int = 0  # a pull whose prefill engine could not be reached
    kv_expired_leases: int = 0
    kv_cache_usage: float = 0.0  # fraction of KV blocks in use, last step
    running: int = 0
    waiting: int = 0

    @property
    def prefix_hit_ratio(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def snapshot(self) -> dict[str, Any]:
        out = asdict(self)
        out["prefix_hit_ratio"] = self.prefix_hit_ratio
        return out

    def add_scheduler_stats(self, stats: Any) -> None:
        self.kv_cache_usage = float(stats.kv_cache_usage)
        self.running = int(stats.num_running_reqs)
        self.waiting = int(stats.num_waiting_reqs)
        pc = stats.prefix_cache_stats
        if pc is not None and not pc.reset:
            self.prefix_queries += int(pc.queries)
            self.prefix_hits += int(pc.hits)
        cpc = stats.connector_prefix_cache_stats
        if cpc is not None:
            self.connector_queries += int(cpc.queries)
            self.connector_hits += int(cpc.hits)
        if stats.kv_connector_stats:
            self.add_nixl_stats(stats.kv_connector_stats)

    def add_nixl_stats(self, payload: dict[str, Any]) -> None:
        # NixlKVConnectorStats.to_dict(): either the data dict itself or wrapped in "data".
        data = payload.get("data", payload)
        durations = data.get("transfer_duration") or []
        self.kv_transfers += len(durations)
        self.kv_transfer_s += float(sum(durations))
        self.kv_bytes += int(sum(data.get("bytes_transferred") or []))
        self.kv_failed_transfers += len(data.get("num_failed_transfers") or [])
        self.kv_failed_handshakes += len(data.get("num_failed_handshakes") or [])
        self.kv_expired_leases += len(data.get("num_kv_expired_reqs") or [])


def stat_logger_factory(counters: EngineCounters,
                        on_update: Callable[[EngineCounters], None] | None = None) -> Any:
    """A vLLM StatLoggerFactory whose loggers add into ``counters`` (then call ``on_update``)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class CountersLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.counters = counters

        def record(self, scheduler_stats: Any, iteration_stats: Any,
                   mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
            if scheduler_stats is not None:
                self.counters.add_scheduler_stats(scheduler_stats)
                if on_update is not None:
                    on_update(self.counters)

        def log_engine_initialized(self) -> None:
            pass

    return CountersLogger
