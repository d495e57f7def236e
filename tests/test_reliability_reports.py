"""The fault run's and the soak's bookkeeping (bench/fault_report.py, bench/soak_report.py,
bench/replicas.py names) and the request router's replica pin, on recorded data: no Ray."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.fault_report import (
    call_counts,
    is_clear_retryable,
    is_overload_refusal,
    outcome,
    overload_refusals,
    problems,
)
from bench.records import CallRecord, RunResult
from bench.replicas import Replica, by_deployment, parse_replica_name
from bench.soak_report import markdown, memory_growth, windows
from bench.soak_report import problems as soak_problems
from contract.wire import PrefillRequest, ReplicaProbe, RouteHints
from routing.serve_router import route_hints_of


def _call(start: float, end: float, status: int | None = 200, error: str | None = None,
          ttft: float | None = 0.1, streamed: int | None = None) -> CallRecord:
    return CallRecord(session="s", turn=0, step=0, role="planner", kind="agent", start_s=start,
                      end_s=end, ttft_s=ttft, prompt_tokens=10, completion_tokens=4,
                      cached_tokens=0, status=status, error=error, streamed_tokens=streamed)


OPENAI_503 = 'HTTP 503: {"error": {"message": "serving replica lost: x; retry the request"}}'


def test_outcomes_and_which_failures_are_clear_retryable_errors():
    cases = [
        (_call(0, 1), "completed", False),
        (_call(0, 1, 503, OPENAI_503), "http_503", True),
        (_call(0, 1, 504, 'HTTP 504: {"error": {"code": "kv_pull_timeout"}}'), "http_504", True),
        (_call(0, 1, 500, 'HTTP 500: {"error": {}}'), "http_500", False),
        (_call(0, 1, 503, "HTTP 503: upstream gone"), "http_503", False),  # no OpenAI body
        (_call(0, 1, 200, "stream error: serving replica lost: x; retry the request"),
         "stream_error", True),
        (_call(0, 150, None, "timeout after 150s"), "client_timeout", False),
        (_call(0, 1, None, "ReadError: closed"), "transport_error", False),
    ]
    for call, kind, retryable in cases:
        assert outcome(call) == kind, call
        if call.error is not None:
            assert is_clear_retryable(call) is retryable, call


def _report(calls: list[CallRecord], **overrides) -> dict:
    result = RunResult(url="u", workload={"output_tokens": 4}, started_at=0.0, calls=calls)
    report = {"calls": call_counts(result), "blocks_free_after": {"prefill-shared#a": True},
              "replacement": {"ok": True, "seconds": 5.0, "new_replicas": ["x"]},
              "after_faults_ok": {"planner": True}, "faults": [{"kind": "kill", "t_s": 1.0}]}
    report.update(overrides)
    return report


def test_a_clean_fault_run_has_no_problems_and_counts_add_up():
    report = _report([_call(0, 1, streamed=4), _call(1, 2, streamed=4)])
    assert report["calls"]["sent"] == 2 and report["calls"]["completed"] == 2
    assert report["calls"]["token_count_mismatches"] == 0
    assert problems(report) == []


def test_any_error_the_client_sees_is_a_problem_even_a_clear_retryable_one():
    report = _report([_call(0, 1), _call(0, 2, 503, OPENAI_503)])
    assert report["calls"]["failed_by_outcome"] == {"http_503": 1}
    [problem] = problems(report)
    assert "1 call(s) failed where the client sees it" in problem


@pytest.mark.parametrize("streamed", [3, 5, 8])  # a lost token, a repeated one, a repeated run
def test_a_completed_stream_with_a_token_too_many_or_too_few_is_a_problem(streamed):
    report = _report([_call(0, 1, streamed=4), _call(1, 2, streamed=streamed)])
    assert report["calls"]["token_count_mismatches"] == 1
    [problem] = problems(report)
    assert "sent twice or lost" in problem


def test_token_counts_are_not_judged_when_the_run_did_not_count_them():
    report = _report([_call(0, 1)])
    assert report["calls"]["token_count_mismatches"] is None and problems(report) == []


@pytest.mark.parametrize("override, expected", [
    ({"blocks_free_after": {"decode-planner#b": False}}, "stranded"),
    ({"replacement": {"ok": False, "seconds": 300.0}}, "did not replace"),
    ({"after_faults_ok": {"critic": False}}, "does not answer"),
    ({"faults": [{"kind": "kill", "t_s": 1.0, "error": "no such actor"}]}, "could not be applied"),
])
def test_each_broken_guarantee_is_a_problem(override, expected):
    [problem] = problems(_report([_call(0, 1)], **override))
    assert expected in problem


def test_a_hung_call_and_an_unclear_error_are_problems():
    found = problems(_report([_call(0, 150, None, "timeout after 150s"),
                              _call(0, 1, 500, 'HTTP 500: {"error": {}}')]))
    assert any("hung" in p for p in found)
    assert any("without a clear retryable error" in p for p in found)
    assert any("2 call(s) failed where the client sees it" in p for p in found)


def test_replica_names():
    r = parse_replica_name("SERVE_REPLICA::ps-e2e#decode-planner#abc123")
    assert r == Replica("ps-e2e", "decode-planner", "abc123") and r.is_engine
    assert r.actor_name == "SERVE_REPLICA::ps-e2e#decode-planner#abc123"
    assert parse_replica_name("SERVE_CONTROLLER_ACTOR") is None
    assert not Replica("ps-e2e", "ingress", "x").is_engine
    assert by_deployment([r, Replica("ps-e2e", "decode-planner", "z")]) == {
        "decode-planner": ["abc123", "z"]}


def test_router_pins_probe_calls_only():
    def pending(*args):
        return SimpleNamespace(args=args, kwargs={})

    assert route_hints_of(pending(ReplicaProbe.of("abc"))).target_replica == "abc"
    hinted = PrefillRequest("r", (1, 2), RouteHints(block_hashes=(1,)))
    assert route_hints_of(pending(hinted)).target_replica is None
    assert route_hints_of(None).target_replica is None


def test_windows_group_calls_by_end_time():
    calls = [_call(0, 5), _call(0, 8, 503, OPENAI_503), _call(50, 70), _call(60, 119)]
    ws = windows(calls, window_s=60, total_s=119)
    assert [(w["requests"], w["errors"]) for w in ws] == [(2, 1), (2, 0)]
    assert ws[0]["p95_e2e_s"] == 5.0  # only successful calls count for latency
    assert ws[1]["p95_e2e_s"] == pytest.approx(20 + 0.95 * (59 - 20))


def _samples(values: list[float], pid: int = 7) -> list[dict]:
    return [{"t_s": 60.0 * i, "replicas": {"SERVE_REPLICA::a#decode-x#r": {"pid": pid,
                                                                           "rss_mib": v}}}
            for i, v in enumerate(values)]


def test_memory_growth_from_the_warm_start_to_the_end():
    growth = memory_growth(_samples([500, 900, 1000, 1001, 1002, 1010, 1012, 1013]), skip_s=60)
    [(name, g)] = growth.items()
    assert name.endswith("pid 7")
    assert g["first_mib"] == 500  # start-up is not growth
    assert g["start_mib"] == 1000 and g["end_mib"] == 1012
    assert g["growth_mib"] == 12
    report = {"memory": growth, "calls": {"sent": 8, "client_timeouts": 0}}
    assert soak_problems(report, max_growth_mib=256) == []


def test_a_replacement_process_is_measured_from_its_own_warm_start():
    samples = _samples([2500, 2500, 2500, 2500])
    samples += [{"t_s": 60.0 * (4 + i), "replicas": {"SERVE_REPLICA::a#decode-x#r2": {
        "pid": 9, "rss_mib": v}}} for i, v in enumerate([200, 1500, 2500, 2500, 2520, 2530])]
    samples.append({"t_s": 600.0, "replicas": {"SERVE_REPLICA::a#decode-x#r3": {
        "pid": 11, "rss_mib": 300}}})
    growth = memory_growth(samples, skip_s=120)
    assert growth["SERVE_REPLICA::a#decode-x#r2 pid 9"]["growth_mib"] == 20
    assert growth["SERVE_REPLICA::a#decode-x#r3 pid 11"]["growth_mib"] is None  # one sample
    report = {"memory": growth, "calls": {"sent": 8, "client_timeouts": 0}}
    assert soak_problems(report, max_growth_mib=256) == []


def test_memory_clock_starts_when_a_process_first_served():
    # An engine replica still loading (served 0) for two samples, then serving and growing
    # its worker (KV pages, first forward passes) before it settles.
    rows = [(0, 900, 0), (0, 1800, 0), (3, 2500, 200), (9, 2550, 250), (20, 2560, 250),
            (31, 2561, 251), (40, 2562, 252), (52, 2563, 252)]
    samples = [{"t_s": 60.0 * i, "replicas": {"SERVE_REPLICA::a#prefill-x#r": {
        "pid": 5, "rss_mib": 300 + w + c, "served": served,
        "parts": {"replica": 300, "engine_core": c, "worker": w}}}}
        for i, (served, w, c) in enumerate(rows)]
    [g] = memory_growth(samples, skip_s=60).values()
    assert g["serving_from_s"] == 120
    # Warm from t=180 (served at 120, + 60 s): medians of 3100/3110/3112 and 3112/3114/3115;
    # the load-time jump 1200 -> 3000 is not growth.
    assert g["first_mib"] == 1200
    assert g["start_mib"] == 3110 and g["end_mib"] == 3114 and g["growth_mib"] == 4
    assert g["growth_by_part_mib"] == {"engine_core": 2, "replica": 0, "worker": 2}


def test_a_process_that_never_served_gets_no_growth():
    samples = [{"t_s": 60.0 * i, "replicas": {"SERVE_REPLICA::a#decode-x#r": {
        "pid": 5, "rss_mib": 1000 + 100 * i, "served": 0}}} for i in range(6)]
    [g] = memory_growth(samples, skip_s=0).values()
    assert g["serving_from_s"] is None and g["growth_mib"] is None


def test_unbounded_memory_growth_fails_the_soak():
    leaky = memory_growth(_samples([1000 + 100 * i for i in range(10)]), skip_s=0)
    [g] = leaky.values()
    assert g["slope_mib_per_h"] == pytest.approx(6000)
    report = {"memory": leaky, "calls": {"sent": 8, "client_timeouts": 0}}
    [problem] = soak_problems(report, max_growth_mib=256)
    assert "grew 700 MiB" in problem


def test_soak_markdown_has_a_row_per_window_and_replica():
    calls = [_call(0, 5), _call(61, 70)]
    report = {"command": "prefillshare soak", "duration_s": 120, "models": "tiny",
              "window_s": 60, "warmup_s": 0, "max_growth_mib": 256,
              "calls": {"sent": 2, "completed": 2, "failed": 0, "failed_by_outcome": {}},
              "windows": windows(calls, 60, 120), "memory": memory_growth(_samples([1, 2]), 0),
              "problems": []}
    text = markdown(report)
    assert text.startswith("# Soak run: PASS")
    assert "| 0.0-1.0 | 1 | 0 |" in text and "| 1.0-2.0 | 1 | 0 |" in text
    assert "decode-x" in text


OVERLOADED = ('HTTP 503 [overloaded]: {"error": {"message": "the decode engine is overloaded", '
              '"type": "overloaded", "code": "overloaded"}}')


def _pressure_report(calls: list[CallRecord], at_end: list[str] | None = None) -> dict:
    failed = sum(1 for c in calls if c.error is not None)
    refused = overload_refusals(RunResult(url="", workload={}, started_at=0.0, calls=calls))
    return {"memory": {}, "calls": {"sent": len(calls), "failed": failed, "client_timeouts": 0},
            "admission": {"max_waiting": 2, "max_inflight": None, "refused_overloaded": refused},
            "replicas": {"at_start": ["a", "b"], "at_end": ["a", "b"] if at_end is None else at_end}}


def test_a_pressure_run_passes_when_overload_is_refused_and_nothing_else_fails():
    at_ingress = OVERLOADED.replace("the decode engine is overloaded",
                                    "overloaded (12 requests in flight at this ingress, limit 12)")
    calls = [_call(0, 5), _call(0, 1, 503, OVERLOADED), _call(1, 6), _call(1, 2, 503, at_ingress)]
    assert is_overload_refusal(calls[1]) and not is_overload_refusal(_call(0, 1, 503, OPENAI_503))
    report = _pressure_report(calls)
    assert report["admission"]["refused_overloaded"] == {"total": 2, "ingress": 1, "engine": 1}
    assert soak_problems(report, max_growth_mib=256) == []


def test_a_pressure_run_fails_on_other_errors_no_refusal_or_a_killed_replica():
    lost = [_call(0, 5), _call(0, 1, 503, OVERLOADED), _call(0, 2, 503, OPENAI_503)]
    [problem] = soak_problems(_pressure_report(lost), max_growth_mib=256)
    assert "1 call(s) failed other than by an overload refusal" in problem
    [problem] = soak_problems(_pressure_report([_call(0, 5)]), max_growth_mib=256)
    assert "refused nothing" in problem
    killed = _pressure_report([_call(0, 1, 503, OVERLOADED)], at_end=["a", "c"])
    [problem] = soak_problems(killed, max_growth_mib=256)
    assert "killed or replaced" in problem and "'b'" in problem


def test_the_driver_keeps_the_openai_error_code_whole():
    from bench.driver import openai_error_code

    body = '{"error": {"message": "' + "x" * 400 + '", "type": "server_error", "code": "overloaded"}}'
    assert openai_error_code(body) == "overloaded"  # past the 300 characters the record keeps
    assert openai_error_code('{"error": {"message": "m"}}') == "-"
    assert openai_error_code("upstream gone") == "-"
