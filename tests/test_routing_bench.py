"""bench/routing_policies.py without engines: its app args are valid configs for every policy,
the workloads are skewed as described, and the report reads what a run saves."""

from __future__ import annotations

import json

import pytest

from bench.routing_policies import app_args, main, report, spread, workloads
from contract.config import AppConfig
from contract.routing_policies import ROUTING_POLICIES


@pytest.mark.parametrize("policy", list(ROUTING_POLICIES))
def test_app_args_validate_for_every_policy(policy: str) -> None:
    cfg = AppConfig.model_validate(app_args(policy, "smollm2", 2, {"block_size": 128}, kv_events=True))
    assert cfg.routing.prefill_policy == policy and cfg.routing.kv_events
    assert cfg.prefill_pools["shared"].replicas == 2


def test_heavy_sessions_carry_most_of_the_context() -> None:
    wl = workloads(heavy_sessions=2, heavy_turns=6, light_sessions=6, output_tokens=16)
    heavy = wl["heavy"].num_sessions * wl["heavy"].turns * wl["heavy"].initial_context_tokens
    light = wl["light"].num_sessions * wl["light"].turns * wl["light"].initial_context_tokens
    assert heavy > 3 * light


def test_spread() -> None:
    assert spread([1, 1, 1])["max_over_mean"] == 1.0 and spread([1, 1, 1])["cv"] == 0.0
    assert spread([3, 1])["max_over_mean"] == 1.5
    assert spread([0, 0])["max_over_mean"] is None


def test_report_reads_saved_runs(tmp_path) -> None:
    lat = {"p50": 1.0, "p95": 2.0}
    run = {"policy": "session_sticky", "kv_events": False,
           "summary": {"latency_s": {"call_e2e": lat}, "calls": {"failed": 0},
                       "prefix_cache": {"usage_hit_ratio": 0.8, "theoretical_best_hit_ratio": 0.9}},
           "heavy": lat, "light": lat,
           "per_replica": {"a": {"requests": 5, "hit_ratio": 0.9}, "b": {"requests": 3, "hit_ratio": None}},
           "spread_computed_tokens": {"max_over_mean": 1.25}}
    (tmp_path / "session_sticky.json").write_text(json.dumps(run))
    table = report(tmp_path)
    assert "| session_sticky | off | 0.800 | 0.900 | 0.90 / - | 5 / 3 | 1.25 |" in table


def test_cli_usage_errors(tmp_path, capsys) -> None:
    assert main(["report", "--out-dir", str(tmp_path / "none")]) == 2
    assert main(["run", "--policy", "power_of_two", "--prefill-replicas", "1"]) == 2
