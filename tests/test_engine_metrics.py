"""EngineMetrics (vllm_runtime/engine_metrics.py): what an engine's running counters turn into
on Ray's metrics API, with Ray's Counter and Gauge replaced by recorders."""

from __future__ import annotations

from typing import Any

import pytest

from vllm_runtime import engine_metrics, held_gauges
from vllm_runtime.engine_stats import EngineCounters


class Recorder:
    calls: list[tuple[str, str, float, dict[str, str]]] = []

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] = ()) -> None:
        self.name, self.tag_keys = name, tag_keys

    def _record(self, op: str, value: float, tags: dict[str, str]) -> None:
        assert set(tags) == set(self.tag_keys), (self.name, tags)
        if op == "inc" and value <= 0:
            raise ValueError("Ray counters raise on increments <= 0")
        Recorder.calls.append((op, self.name, value, tags))

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self._record("inc", value, tags)

    def set(self, value: float, tags: dict[str, str]) -> None:
        self._record("set", value, tags)


@pytest.fixture
def calls(monkeypatch) -> list[Any]:
    monkeypatch.setattr(engine_metrics, "Counter", Recorder)
    monkeypatch.setattr(engine_metrics, "Gauge", Recorder)
    monkeypatch.setattr(held_gauges, "REFRESH_S", 0)  # no refresher thread writing into calls
    Recorder.calls = []
    return Recorder.calls


def test_counters_publish_increases_and_gauges_changes(calls):
    m = engine_metrics.EngineMetrics("planner", "decode", "decode-planner-abc")
    c = EngineCounters(prefix_queries=300, prefix_hits=128, connector_hits=256, kv_transfers=1,
                       kv_bytes=4096, kv_transfer_s=0.02, running=1)
    m.publish(c)
    tags = {"pool": "planner", "kind": "decode", "replica": "decode-planner-abc"}
    got = {(op, name): value for op, name, value, t in calls if t == tags}
    assert got[("inc", "prefillshare_kv_transfers")] == 1
    assert got[("inc", "prefillshare_kv_transfer_bytes")] == 4096
    assert got[("inc", "prefillshare_prefix_cache_hits")] == 128
    assert got[("set", "prefillshare_engine_queue_depth")] == 1
    assert ("inc", "prefillshare_kv_transfer_failures") not in got  # nothing failed: no inc(0)
    sources = {t["source"]: v for op, name, v, t in calls if name == "prefillshare_decode_prompt_tokens"}
    assert sources == {"pulled": 256, "reused": 128}

    calls.clear()
    c.kv_transfers, c.kv_bytes, c.kv_transfer_s = 3, 12288, 0.05
    c.running = 0
    m.publish(c)  # right after the first: published too (no throttle that drops the tail)
    got = {(op, name): value for op, name, value, _ in calls}
    assert got[("inc", "prefillshare_kv_transfers")] == 2
    assert got[("inc", "prefillshare_kv_transfer_bytes")] == 8192
    assert got[("inc", "prefillshare_kv_transfer_seconds")] == pytest.approx(0.03)
    assert got[("set", "prefillshare_engine_queue_depth")] == 0
    # Unchanged gauges and counters are not re-sent.
    assert ("set", "prefillshare_prefix_cache_hit_ratio") not in got
    assert ("inc", "prefillshare_prefix_cache_queries") not in got


def test_prefill_engines_report_no_reused_decode_tokens(calls):
    m = engine_metrics.EngineMetrics("shared", "prefill", "prefill-shared-x")
    m.publish(EngineCounters(prefix_queries=256, prefix_hits=128))
    assert not [c for c in calls if c[1] == "prefillshare_decode_prompt_tokens"]


def test_vllm_stat_loggers_only_inside_ray(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert engine_metrics.vllm_stat_loggers() == []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    [logger] = engine_metrics.vllm_stat_loggers()
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    # A PrometheusStatLogger subclass: AsyncLLM then skips its prometheus_client one.
    assert issubclass(logger, PrometheusStatLogger) and logger.__name__ == "RayPrometheusStatLogger"
