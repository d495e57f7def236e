"""GET /stats over every replica of a pool (router_service/pool_stats.py)."""

from __future__ import annotations

import asyncio

import pytest

from router_service import pool_stats
from router_service.pool_stats import merge_replica_reports, replica_ids

NAMES = ["SERVE_REPLICA::ps#prefill-shared#a1", "SERVE_REPLICA::ps#prefill-shared#b2",
         "SERVE_REPLICA::ps#decode-planner#c3", "SERVE_REPLICA::other#prefill-shared#d4",
         "SERVE_CONTROLLER_ACTOR", "SERVE_REPLICA::ps#broken"]


def test_replica_ids_are_the_deployments_own_in_its_app():
    assert replica_ids(NAMES, "ps", "prefill-shared") == ["a1", "b2"]
    assert replica_ids(NAMES, "ps", "decode-planner") == ["c3"]
    assert replica_ids(NAMES, "ps", "decode-critic") == []


def _report(hits: int, queries: int, usage: float, pid: int) -> dict:
    return {"pool": "shared", "model": "m", "replica": f"r{pid}", "pid": pid, "start_s": 9.0,
            "prefix_hits": hits, "prefix_queries": queries, "prefix_hit_ratio": hits / queries,
            "kv_bytes": 10 * pid, "kv_cache_usage": usage, "inflight": pid}


def test_merge_sums_counters_averages_usage_and_recomputes_the_hit_ratio():
    merged = merge_replica_reports({"a": _report(90, 100, 0.2, 1), "b": _report(0, 300, 0.6, 2)},
                                   missing=["c"])
    assert merged["prefix_hits"] == 90 and merged["prefix_queries"] == 400
    assert merged["prefix_hit_ratio"] == pytest.approx(90 / 400)  # not the mean of 0.9 and 0
    assert merged["kv_bytes"] == 30 and merged["inflight"] == 3
    assert merged["kv_cache_usage"] == pytest.approx(0.4)
    assert "pid" not in merged and merged["start_s"] == 9.0
    assert merged["pool"] == "shared" and set(merged["replicas"]) == {"a", "b"}
    assert merged["missing"] == ["c"]


def test_merge_of_no_answer_is_zero_not_an_error():
    merged = merge_replica_reports({}, missing=["a"])
    assert merged["prefix_hit_ratio"] == 0.0 and merged["replicas"] == {}


class _Handle:
    app_name, deployment_name = "ps", "prefill-shared"


def _fake_replicas(monkeypatch, answers: dict[str, dict | None]) -> list[tuple[str, str, str]]:
    """Each replica actor answers its report, or never (dying, or still starting)."""
    asked = []

    async def report(app: str, deployment: str, rid: str) -> dict:
        asked.append((app, deployment, rid))
        if answers[rid] is None:
            await asyncio.sleep(3600)
        return answers[rid]
    monkeypatch.setattr(pool_stats, "_live_actor_names", lambda: NAMES)
    monkeypatch.setattr(pool_stats, "_replica_report", report)
    return asked


def test_every_live_replica_is_asked_and_a_silent_one_is_listed_missing(monkeypatch):
    asked = _fake_replicas(monkeypatch, {"a1": _report(5, 10, 0.1, 1), "b2": None})
    merged = asyncio.run(pool_stats.deployment_stats(_Handle(), timeout_s=0.2))
    assert sorted(asked) == [("ps", "prefill-shared", "a1"), ("ps", "prefill-shared", "b2")]
    assert merged["prefix_queries"] == 10 and set(merged["replicas"]) == {"a1"}
    assert merged["missing"] == ["b2"]
    _fake_replicas(monkeypatch, {"a1": _report(5, 10, 0.1, 1), "b2": _report(7, 20, 0.3, 2)})
    merged = asyncio.run(pool_stats.deployment_stats(_Handle(), timeout_s=5))
    assert merged["prefix_queries"] == 30 and merged["missing"] == []
