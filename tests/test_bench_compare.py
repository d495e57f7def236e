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


def row(topology: str, rate: float, conc: int, kv: float, call_s: float, cached: int,
        repeat: int | None = None, memory: float | None = None) -> dict:
    out = {"topology": topology, "rate": rate, "max_concurrent": conc, "prefill_kv_gib": kv,
           "engines": {"prefill": 4, "decode": 4},
           "summary": summarize(run_of(call_s, cached), block_size=128)}
    if repeat is not None:  # rows written before repeats existed have no index
        out["repeat"] = repeat
    if memory is not None:
        out["memory"] = {"rss_gib": memory, "processes": 8.0}
    return out


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
    assert small["rss_gib_baseline"] is None and small["tput_per_gib_ratio"] is None  # old rows
    reuse = ratios(rows, prefillshare="prefillshare-reuse")
    assert len(reuse) == 1 and reuse[0]["p95_ratio"] == pytest.approx(8.0)


def test_repeats_are_paired_by_index_and_reported_as_median_and_spread(tmp_path: Path):
    # Three repeats: the baseline's p95 4, 2, 8 s against PrefillShare's 1, 1, 2 s.
    rows = [row("baseline", 1.0, 12, 0.25, call_s=t, cached=0, repeat=i)
            for i, t in enumerate((4.0, 2.0, 8.0))]
    rows += [row("prefillshare", 1.0, 12, 0.25, call_s=t, cached=128, repeat=i)
             for i, t in enumerate((1.0, 1.0, 2.0))]
    rows.append(row("baseline", 1.0, 12, 0.25, call_s=9.0, cached=0, repeat=3))  # no partner
    [line] = ratios(rows)
    assert line["repeats"] == 3
    assert line["max_concurrent"] == 12 and "max_concurrent" not in line["spread"]
    assert line["p95_baseline_s"] == pytest.approx(4.0)  # the median
    assert line["spread"]["p95_baseline_s"] == pytest.approx((2.0, 8.0))
    # Ratios per repeat (4, 2, 4), then their median and spread: not median over median.
    assert line["p95_ratio"] == pytest.approx(4.0)
    assert line["spread"]["p95_ratio"] == pytest.approx((2.0, 4.0))
    text = main_report(rows, tmp_path)
    assert "| 1.0/s ≤12 | 0.25 | 3 | 4.00 (2.00-8.00) |" in text
    assert "| 4.00x (2.00-4.00x) |" in text


def main_report(rows: list[dict], tmp_path: Path) -> str:
    saved = tmp_path / "rows.json"
    saved.write_text(json.dumps(rows))
    assert main(["--from-results", str(saved), "--out-dir", str(tmp_path / "r")]) == 0
    return (tmp_path / "r" / "bench_summary.md").read_text()


def test_memory_per_system_and_throughput_per_gib():
    rows = [row("vllm-lora", 1.0, 12, 0.25, call_s=1.0, cached=0, memory=2.0),
            row("prefillshare-lora", 1.0, 12, 0.25, call_s=0.5, cached=128, memory=5.0)]
    [line] = ratios(rows, baseline="vllm-lora", prefillshare="prefillshare-lora")
    assert (line["rss_gib_baseline"], line["rss_gib_prefillshare"]) == (2.0, 5.0)
    # Twice the throughput on 2.5x the memory: 0.8x the throughput per GiB.
    assert line["tput_per_gib_ratio"] == pytest.approx(0.8)


def test_summarize_repeats_keeps_what_it_cannot_take_a_median_of():
    from bench.repeats import summarize_repeats, with_spread

    one = summarize_repeats([{"p95": 2.0, "hit": None, "errors": 1, "name": "a"}])
    assert one["repeats"] == 1 and with_spread(one, "p95", ".1f") == "2.0"
    lines = [{"p95": 2.0, "hit": 0.5, "errors": 1, "name": "a"},
             {"p95": 4.0, "hit": None, "errors": 2, "name": "a"}]
    out = summarize_repeats(lines)
    assert out["p95"] == 3.0 and out["hit"] is None and out["errors"] == 3
    assert out["name"] == "a" and with_spread(out, "hit", ".2f") == "-"
    with pytest.raises(ValueError):
        summarize_repeats([])


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
    assert main(["--repeats", "0", "--out-dir", str(tmp_path)]) == 2


def test_a_server_timeout_at_or_over_the_client_timeout_is_a_usage_error(tmp_path: Path):
    # The server must answer (504) before the client gives up, or a slow call counts as hung.
    assert main(["--server-timeout-s", "300", "--request-timeout-s", "300",
                 "--out-dir", str(tmp_path)]) == 2


def test_the_lora_systems_serve_every_role_as_an_adapter_over_the_base():
    adapters = {r: f"/adapters/{r}" for r in ROLES}
    engine, decode = {"kv_cache_space_gib": 0.5}, {"kv_cache_space_gib": 0.25}
    ps = app_args("prefillshare-lora", ROLES, "m", engine, decode_engine=decode,
                  adapters=adapters, lora_rank=16)
    assert ps["prefill_pools"] == {"shared": {"engine": engine}}
    assert ps["lora_pool"] == {"engine": decode, "max_lora_rank": 16, "max_loras": 4}
    assert {r["name"]: r["lora_adapter"] for r in ps["roles"]} == adapters
    assert engine_count(ps) == {"prefill": 1, "decode": 1}
    plain = app_args("vllm-lora", ROLES, "m", engine, decode_engine=decode, adapters=adapters)
    # One engine with the KV space of prefillshare-lora's prefill + decode engines.
    assert plain == {"model": "m", "adapters": adapters,
                     "engine": {"kv_cache_space_gib": 0.75, "max_lora_rank": 8}}
    assert engine_count(plain) == {"prefill": 0, "decode": 1}
    with pytest.raises(ValueError, match="one adapter per role"):
        app_args("vllm-lora", ROLES, "m", engine, adapters={"planner": "/a"})


def test_vllm_serve_runs_on_loopback_with_the_adapters_and_the_same_engine_options():
    from bench.vllm_server import serve_command, server_environment

    cmd = serve_command("/models/base", {"planner": "/a/p", "coder": "/a/c"}, 20123,
                        {"max_model_len": 4096, "kv_cache_space_gib": 0.25, "block_size": 128},
                        max_lora_rank=8)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "20123"
    assert cmd[cmd.index("--kv-cache-memory-bytes") + 1] == str(1 << 28)
    assert "--enable-prefix-caching" in cmd and "--enable-prompt-tokens-details" in cmd
    modules = cmd[cmd.index("--lora-modules") + 1:]
    assert modules[:2] == ["planner=/a/p", "coder=/a/c"]
    assert cmd[cmd.index("--max-loras") + 1] == "2" and cmd[cmd.index("--max-lora-rank") + 1] == "8"
    env = server_environment(2)
    assert env["VLLM_HOST_IP"] == "127.0.0.1" and env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert "VLLM_CPU_KVCACHE_SPACE" not in env


def test_role_adapters_from_a_folder_need_one_per_role(tmp_path: Path):
    from bench.role_adapters import role_adapters

    for r in ROLES[:2]:
        (tmp_path / r).mkdir()
        (tmp_path / r / "adapter_config.json").write_text("{}")
    assert role_adapters("m", ROLES[:2], str(tmp_path)) == {r: str(tmp_path / r) for r in ROLES[:2]}
    with pytest.raises(FileNotFoundError, match="tool"):
        role_adapters("m", ROLES, str(tmp_path))


def test_an_unknown_topology_is_a_usage_error(tmp_path: Path):
    assert main(["--topologies", "baseline,sglang", "--out-dir", str(tmp_path)]) == 2
