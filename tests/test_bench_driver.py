"""The multi-agent benchmark driver (bench/) against the real API on a fake backend, served by
uvicorn on 127.0.0.1 (httpx's ASGI transport buffers whole responses, so TTFT would be
meaningless there), plus the metrics math on hand-made data."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from bench.driver import check_loopback, drive
from bench.fake_backend import FakeBackend
from bench.metrics import (
    distribution,
    percentile,
    reusable_tokens,
    summarize,
    theoretical_best_hit_ratio,
)
from bench.records import CallRecord, RunResult, StatsSample
from bench.run import bookkeeping_problems, main, smoke_workload
from bench.workload import Workload, arrival_times, session_steps
from contract.roles import ServedRole
from tests.api_fixtures import make_app, served_on_loopback

ROLES = [ServedRole("planner", "You are the planner."), ServedRole("coder", "You write code."),
         ServedRole("tool_caller", None), ServedRole("critic", "You criticize.")]
BLOCK = 16


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    # A small per-token delay so TTFT and e2e latency are distinct and non-zero.
    backend = FakeBackend(delay_s=0.002, block_size=BLOCK)
    app, _ = make_app(backend, roles=ROLES, max_model_len=8192)
    with served_on_loopback(app) as url:
        yield url


@pytest.mark.parametrize("pattern", ["react", "reflexion"])
def test_drive_against_fake_api(server_url: str, pattern: str) -> None:
    workload = smoke_workload(pattern)
    result = asyncio.run(drive(server_url, workload, stats_url=f"{server_url}/stats",
                               progress=None))
    summary = summarize(result, block_size=BLOCK)
    assert bookkeeping_problems(result, summary) == []

    roles = [r.name for r in ROLES]
    assert result.workload["roles"] == roles  # filled in from /v1/models
    per_session = len(roles) + (pattern == "reflexion")
    assert summary["calls"] == {"sent": 2 * 2 * per_session, "completed": 2 * 2 * per_session,
                                "failed": 0}
    assert summary["sessions"]["completed"] == 2
    for c in result.calls:
        assert c.completion_tokens == workload.output_tokens  # ignore_eos: fixed length
        assert c.ttft_s is not None and 0 < c.ttft_s <= c.e2e_s
        assert c.status == 200
    if pattern == "reflexion":
        reflections = [c for c in result.calls if c.kind == "reflect"]
        assert len(reflections) == 4 and {c.role for c in reflections} == {"critic"}
        assert sorted((c.turn, c.step) for c in reflections) == [(0, 4), (0, 4), (1, 9), (1, 9)]

    # The context grows along each session, and the fake's prefix cache hits on it.
    for sid in {c.session for c in result.calls}:
        prompts = [c.prompt_tokens or 0 for c in sorted(result.calls, key=lambda c: c.step)
                   if c.session == sid]
        assert prompts == sorted(prompts) and prompts[0] > 150  # ~200 tokens of context
    cache = summary["prefix_cache"]
    assert 0.5 < cache["usage_hit_ratio"] <= cache["theoretical_best_hit_ratio"] < 1
    assert cache["theoretical_best_same_role_hit_ratio"] <= cache["theoretical_best_hit_ratio"]

    # No /stats on the plain API: engine counters are null, not an error.
    assert result.stats_before is None and result.stats_samples == []
    assert cache["engine"] is None
    assert summary["kv_transfer"] is None and summary["kv_cache_usage"] is None
    assert summary["retries"] is None
    for key in ("url", "workload", "stopped_by", "block_size", "sessions", "calls", "errors",
                "window_s", "latency_s", "throughput", "prefix_cache", "kv_transfer",
                "kv_cache_usage", "retries", "per_role"):
        assert key in summary
    lat = summary["latency_s"]
    for name in ("call_e2e", "ttft", "session_e2e", "session_queue"):
        assert set(lat[name]) == {"n", "mean", "p50", "p95", "p99", "max"}
    assert lat["call_e2e"]["p95"] >= lat["call_e2e"]["p50"] > 0
    assert summary["throughput"]["output_tok_s"] > 0
    assert summary["throughput"]["total_tok_s"] > summary["throughput"]["output_tok_s"]
    assert result.stopped_by == "done"
    # A saved run re-summarizes to the same numbers.
    again = summarize(RunResult.from_json(result.to_json()), block_size=BLOCK)
    assert again == summary


def test_the_driver_counts_streamed_tokens_only_when_asked(server_url: str) -> None:
    counted = smoke_workload("react").model_copy(update={"count_streamed_tokens": True})
    result = asyncio.run(drive(server_url, counted, progress=None))
    assert result.calls and all(c.ok for c in result.calls)
    # One logprobs entry per token streamed: as many as usage says, as many as asked for.
    assert {c.streamed_tokens for c in result.calls} == {counted.output_tokens}
    plain = asyncio.run(drive(server_url, smoke_workload("react"), progress=None))
    assert {c.streamed_tokens for c in plain.calls} == {None}


def test_smoke_cli(server_url: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "smoke.json"
    code = main(["smoke", "--url", server_url, "--block-size", str(BLOCK), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "smoke: ok" in captured.err
    assert "| call e2e p50 / p95 / p99 s |" in captured.out
    assert out.exists()


def test_smoke_cli_sends_the_api_key_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from router_service.auth import KeySources, make_key
    from router_service.guard import RequestGuard

    key = "sk-bench-0123456789abcdef"
    guard = RequestGuard(KeySources((make_key("bench", key),)),
                         known_roles=frozenset(r.name for r in ROLES))
    app, _ = make_app(FakeBackend(block_size=BLOCK), roles=ROLES, max_model_len=8192,
                      guard=guard)
    with served_on_loopback(app) as url:
        monkeypatch.delenv("PREFILLSHARE_API_KEY", raising=False)
        with pytest.raises(Exception, match="401"):  # /v1/models refuses a keyless client
            main(["smoke", "--url", url, "--block-size", str(BLOCK), "--no-stats"])
        monkeypatch.setenv("PREFILLSHARE_API_KEY", key)
        code = main(["smoke", "--url", url, "--block-size", str(BLOCK), "--no-stats"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert key not in err


def test_max_run_s_cancels_and_records(server_url: str) -> None:
    # Calls take far longer than the run may: everything in flight is cancelled and counted.
    workload = Workload(turns=3, initial_context_tokens=50, output_tokens=4000,
                        observation_tokens=(5, 5), num_sessions=3, max_concurrent_sessions=2,
                        arrival_rate=50, max_run_s=0.6)
    result = asyncio.run(drive(server_url, workload, progress=None))
    summary = summarize(result, block_size=BLOCK)
    assert result.stopped_by == "max_run_s"
    assert summary["calls"]["sent"] == summary["calls"]["completed"] + summary["calls"]["failed"]
    assert summary["calls"]["failed"] >= 1
    assert len(result.sessions) == 3
    assert any(s.start_s is None for s in result.sessions)  # the third waited for a slot


def test_refuses_remote_urls() -> None:
    for url in ("http://127.0.0.1:8000", "http://localhost:1", "http://[::1]:80"):
        check_loopback(url)
    for url in ("http://10.0.0.5:8000", "https://example.com"):
        with pytest.raises(ValueError, match="loopback"):
            check_loopback(url)
        check_loopback(url, allow_remote=True)
    with pytest.raises(ValueError, match="loopback"):
        asyncio.run(drive("http://192.168.1.1:8000", smoke_workload(), progress=None))


def test_percentiles() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    xs = [float(x) for x in range(1, 101)]  # 1..100
    assert percentile(xs, 50) == pytest.approx(50.5)
    assert percentile(xs, 95) == pytest.approx(95.05)
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 100.0
    d = distribution([4.0, 1.0, 3.0, 2.0])
    assert d["n"] == 4 and d["p50"] == 2.5 and d["mean"] == 2.5 and d["max"] == 4.0


def _call(session: str, step: int, role: str, prompt: int, cached: int = 0) -> CallRecord:
    return CallRecord(session=session, turn=0, step=step, role=role, kind="agent",
                      start_s=step, end_s=step + 0.5, ttft_s=0.1, prompt_tokens=prompt,
                      completion_tokens=8, cached_tokens=cached, status=200)


def test_theoretical_best_by_hand() -> None:
    # Prompts 40, 70, 75, 100 tokens with 16-token blocks: reusable 0, min(40, 69)=40 -> 32,
    # min(70, 74)=70 -> 64, min(75, 99)=75 -> 64.
    seq = [("a", 40), ("b", 70), ("a", 75), ("b", 100)]
    assert reusable_tokens(seq, 16) == [0, 32, 64, 64]
    # Same role only: a's 75 reuses a's 40 -> 32; b's 100 reuses b's 70 -> 64.
    assert reusable_tokens(seq, 16, same_role=True) == [0, 0, 32, 64]
    # Never the last prompt token: a repeat of a 32-token prompt reuses only one block.
    assert reusable_tokens([("a", 32), ("a", 32)], 16) == [0, 16]
    calls = [_call("s1", i, r, p) for i, (r, p) in enumerate(seq)]
    # A second session does not reuse the first one's prompts.
    calls += [_call("s2", 0, "a", 40), _call("s2", 1, "a", 50)]
    best = theoretical_best_hit_ratio(calls, 16)
    assert best == pytest.approx((32 + 64 + 64 + 32) / (285 + 90))
    assert theoretical_best_hit_ratio([], 16) is None


def test_summary_engine_counters_and_usage() -> None:
    before = {"retries": 1, "prefill": {"p0": {"prefix_hits": 10, "prefix_queries": 100,
                                                "kv_cache_usage": 0.1}},
              "decode": {"d0": {"kv_transfers": 2, "kv_bytes": 1000, "kv_transfer_s": 0.5,
                                "kv_failed_transfers": 0, "kv_cache_usage": 0.0}}}
    after = {"retries": 3, "prefill": {"p0": {"prefix_hits": 70, "prefix_queries": 200,
                                               "kv_cache_usage": 0.3},
                                        "p1": {"prefix_hits": 20, "prefix_queries": 100}},
             "decode": {"d0": {"kv_transfers": 6, "kv_bytes": 5000, "kv_transfer_s": 1.5,
                               "kv_failed_transfers": 0, "kv_cache_usage": 0.2}}}
    calls = [_call("s", 0, "a", 100, 0), _call("s", 1, "a", 200, 96)]
    result = RunResult(url="http://127.0.0.1:1", workload={}, started_at=0.0, calls=calls,
                       stats_before=StatsSample(0.0, before), stats_after=StatsSample(2.0, after),
                       stats_samples=[StatsSample(1.0, before), StatsSample(2.0, after)])
    s = summarize(result, block_size=16)
    assert s["prefix_cache"]["engine"] == {"hits": 80, "queries": 200, "hit_ratio": 0.4}
    assert s["prefix_cache"]["usage_hit_ratio"] == pytest.approx(96 / 300)
    assert s["kv_transfer"]["transfers"] == 4 and s["kv_transfer"]["bytes"] == 4000
    assert s["kv_transfer"]["mean_s"] == pytest.approx(0.25)
    assert s["kv_cache_usage"]["prefill"] == {"max": 0.3, "mean": pytest.approx(0.2)}
    assert s["kv_cache_usage"]["decode"]["max"] == 0.2
    assert s["retries"] == 2
    assert s["window_s"] == 1.5  # first start 0 to last end 1.5
    assert s["throughput"]["output_tok_s"] == pytest.approx(16 / 1.5)


def test_workload_shapes() -> None:
    wl = Workload(pattern="reflexion", roles=("p", "c", "t", "k"), turns=2, num_sessions=3)
    steps = session_steps(wl, 0)
    assert len(steps) == wl.calls_per_session() == 10
    assert [s.role for s in steps[:5]] == ["p", "c", "t", "k", "k"]
    assert steps[4].kind == "reflect" and steps[4].before is not None
    assert [s.observation_tokens is not None for s in steps[:5]] == [False, False, True,
                                                                     False, False]
    assert session_steps(wl, 0) == steps  # deterministic
    react = wl.model_copy(update={"pattern": "react"})
    assert react.calls_per_session() == 8
    assert list(arrival_times(wl)) == list(arrival_times(wl)) and len(list(arrival_times(wl))) == 3
    with pytest.raises(ValueError):
        Workload(num_sessions=None, duration_s=None)
    with pytest.raises(ValueError):
        Workload(roles=("a",), critic_role="b")
