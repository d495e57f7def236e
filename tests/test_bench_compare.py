"""bench.compare's bookkeeping: engine counts per topology, pairing the two topologies' rows
by load point and KV space, the ratios, and a report rebuilt from saved results (no engines:
rows come from bench.metrics.summarize over hand-made runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.compare import engine_count, main, ratios
from bench.metrics import summarize
from bench.records import CallRecord, RunResult, SessionRecord
from bench.topologies import app_args

ROLES = ["planner", "coder", "tool", "critic"]


def run_of(call_s: float, cached: int, prompt: int = 256, calls: int = 4) -> RunResult:
    """One session, ``calls`` calls of ``call_s`` seconds each, 8 output tokens each."""
    result = RunResult(url="http://127.0.0.1:1", workload={}, started_at=0.0)
    for i in range(calls):
        result.calls.append(CallRecord(
            session="s", turn=0, step=i, role=ROLES[i % 4], kind="agent", start_s=i * call_s,
            end_s=(i + 1) * call_s, ttft_s=call_s / 2, prompt_tokens=prompt + 128 * i,
            completion_tokens=8, cached_tokens=cached if i else 0, status=200))
    result.sessions.append(SessionRecord("s", 0, 0.0, 0.0, calls * call_s, calls, calls))
    return result


def row(topology: str, rate: float, conc: int, kv: float, call_s: float, cached: int) -> dict:
    return {"topology": topology, "rate": rate, "max_concurrent": conc, "prefill_kv_gib": kv,
            "engines": {"prefill": 4, "decode": 4},
            "summary": summarize(run_of(call_s, cached), block_size=128)}


def test_engine_counts_of_both_topologies_with_separate_decode_engines():
    prefill, decode = {"kv_cache_space_gib": 0.125}, {"kv_cache_space_gib": 0.25}
    base = app_args("baseline", ROLES, "m", prefill, decode_engine=decode)
    shared = app_args("prefillshare", ROLES, "m", prefill, decode_engine=decode)
    assert engine_count(base) == engine_count(shared) == {"prefill": 4, "decode": 4}
    for args in (base, shared):
        assert all(p["engine"] == prefill for p in args["prefill_pools"].values())
        assert all(r["decode_pool"]["engine"] == decode for r in args["roles"])
    # Without decode_engine both sides use the one engine dict.
    assert app_args("baseline", ROLES, "m", prefill)["roles"][0]["decode_pool"]["engine"] == prefill


def test_ratios_pair_rows_by_load_and_kv_space():
    rows = [row("baseline", 1.0, 8, 0.125, call_s=4.0, cached=0),
            row("prefillshare", 1.0, 8, 0.125, call_s=1.0, cached=128),
            row("baseline", 1.0, 8, 0.5, call_s=2.0, cached=128),
            row("prefillshare", 1.0, 8, 0.5, call_s=1.0, cached=128),
            row("prefillshare-reuse", 1.0, 8, 0.125, call_s=0.5, cached=128),
            row("baseline", 0.1, 2, 0.125, call_s=1.0, cached=0)]  # no partner: left out
    table = ratios(rows)
    assert [(r["prefill_kv_gib"], r["rate"]) for r in table] == [(0.125, 1.0), (0.5, 1.0)]
    small = table[0]
    assert small["p95_ratio"] == pytest.approx(4.0)
    assert small["tput_ratio"] == pytest.approx(4.0)  # same tokens in a quarter of the time
    assert small["hit_baseline"] == 0.0
    assert small["hit_prefillshare"] == pytest.approx(3 * 128 / (4 * 256 + 128 * 6))
    assert small["hit_prefillshare"] <= small["hit_best"]
    assert small["engines_baseline"] == small["engines_prefillshare"]
    prompt = 4 * 256 + 128 * 6
    assert small["prefill_computed_baseline"] == pytest.approx(prompt)
    assert small["prefill_work_ratio"] == pytest.approx(prompt / (prompt - 3 * 128))
    reuse = ratios(rows, prefillshare="prefillshare-reuse")
    assert len(reuse) == 1 and reuse[0]["p95_ratio"] == pytest.approx(8.0)


def test_report_from_saved_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([row("baseline", 0.5, 4, 0.125, 3.0, 0)]))
    b.write_text(json.dumps([row("prefillshare", 0.5, 4, 0.125, 1.0, 128)]))
    assert main(["--from-results", str(a), str(b), "--out-dir", str(tmp_path / "r"),
                 "--prefix", "x"]) == 0
    out = capsys.readouterr().out
    assert "| 0.5/s ≤4 | 0.125 |" in out and "3.00x" in out
    table = json.loads((tmp_path / "r" / "x_ratios.json").read_text())
    assert len(table) == 1 and table[0]["errors"] == 0
    for name in ("p95", "throughput", "hit_ratio"):
        assert (tmp_path / "r" / f"x_{name}.png").stat().st_size > 0


def test_bad_loads_are_a_usage_error(tmp_path: Path):
    assert main(["--loads", "fast", "--out-dir", str(tmp_path)]) == 2


def test_a_server_timeout_at_or_over_the_client_timeout_is_a_usage_error(tmp_path: Path):
    # The server must answer (504) before the client gives up, or a slow call counts as hung.
    assert main(["--server-timeout-s", "300", "--request-timeout-s", "300",
                 "--out-dir", str(tmp_path)]) == 2
