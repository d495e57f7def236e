"""What a fault run's calls add up to, and whether it passed. Pure functions over the driver's
records (bench/records.py) and what bench/fault_run.py observed of the replicas.

Every call ends as one outcome:
- ``completed``: the whole stream arrived (possibly after the ingress retried);
- ``http_503`` / ``http_504`` ...: refused before the first token, with an OpenAI error body;
- ``stream_error``: failed after tokens were sent, reported as an OpenAI error event (a decode
  replica that dies mid-stream is migrated: this is what is left when that cannot be done);
- ``client_timeout``: no answer within the client's timeout: a HANG, never acceptable;
- ``transport_error``: the connection broke without an answer (e.g. the proxy died).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.records import CallRecord, RunResult

RETRYABLE_STATUSES = {503, 504}


def outcome(call: CallRecord) -> str:
    if call.error is None:
        return "completed"
    if call.error.startswith("timeout after"):
        return "client_timeout"
    if call.error.startswith("cancelled"):
        return "cancelled"
    if call.status is not None and call.status != 200:
        return f"http_{call.status}"
    if call.status == 200 and call.error.startswith("stream error"):
        return "stream_error"
    return "transport_error"


def is_clear_retryable(call: CallRecord) -> bool:
    """A failed call the client can act on: 503/504 with an OpenAI body saying so, or an
    error event in the stream asking to retry."""
    kind = outcome(call)
    if kind.startswith("http_"):
        return call.status in RETRYABLE_STATUSES and '"error"' in (call.error or "")
    return kind == "stream_error" and "retry" in (call.error or "")


def is_overload_refusal(call: CallRecord) -> bool:
    """Admission control said no (503, code overloaded): shed load, not a failure."""
    return outcome(call) == "http_503" and "[overloaded]" in (call.error or "")


def overload_refusals(result: RunResult) -> dict[str, int]:
    """Refusals by who said no: the ingress's in-flight limit or an engine's queue/KV limit
    (their messages differ: router_service/admission_gate.py, vllm_runtime/admission.py)."""
    refused = [c for c in result.calls if is_overload_refusal(c)]
    at_ingress = sum(1 for c in refused if "at this ingress" in (c.error or ""))
    return {"total": len(refused), "ingress": at_ingress, "engine": len(refused) - at_ingress}


def call_counts(result: RunResult) -> dict[str, Any]:
    kinds = Counter(outcome(c) for c in result.calls)
    failed = {k: n for k, n in sorted(kinds.items()) if k != "completed"}
    examples: dict[str, str] = {}
    for c in result.calls:
        kind = outcome(c)
        if kind != "completed" and kind not in examples:
            examples[kind] = (c.error or "")[:300]
    return {"sent": len(result.calls), "completed": kinds.get("completed", 0),
            "failed": sum(failed.values()), "failed_by_outcome": failed,
            "token_count_mismatches": token_count_mismatches(result),
            "failed_not_clearly_retryable": sum(
                1 for c in result.calls if c.error is not None and not is_clear_retryable(c)),
            "error_examples": examples}


def token_count_mismatches(result: RunResult) -> int | None:
    """Completed calls whose stream did not carry exactly the tokens asked for (ignore_eos
    fixes the count): a token sent twice or lost, e.g. by a migration. None: not counted."""
    counted = [c for c in result.calls if c.ok and c.streamed_tokens is not None]
    if not counted:
        return None
    want = int(result.workload["output_tokens"])
    return sum(1 for c in counted if not c.streamed_tokens == c.completion_tokens == want)


def problems(report: dict[str, Any]) -> list[str]:
    """Why the run failed; empty when every fault was absorbed as it must be."""
    out = []
    calls = report["calls"]
    if calls["sent"] == 0:
        out.append("no calls were sent")
    if calls["sent"] != calls["completed"] + calls["failed"]:
        out.append(f"calls do not add up: {calls}")
    hung = calls["failed_by_outcome"].get("client_timeout", 0)
    if hung:
        out.append(f"{hung} call(s) hung until the client timeout")
    if calls["failed"]:
        out.append(f"{calls['failed']} call(s) failed where the client sees it: "
                   f"{calls['error_examples']}")
    if calls.get("token_count_mismatches"):
        out.append(f"{calls['token_count_mismatches']} completed call(s) streamed more or fewer "
                   "tokens than asked for (a token sent twice or lost)")
    if calls["failed_not_clearly_retryable"]:
        out.append(f"{calls['failed_not_clearly_retryable']} failed call(s) without a clear "
                   f"retryable error: {calls['error_examples']}")
    for name, free in report["blocks_free_after"].items():
        if not free:
            out.append(f"{name} still holds KV blocks after the run (stranded)")
    if not report["replacement"]["ok"]:
        out.append(f"Serve did not replace the killed replicas: {report['replacement']}")
    for role, ok in report["after_faults_ok"].items():
        if not ok:
            out.append(f"role {role} does not answer after the faults")
    for fault in report["faults"]:
        if fault.get("error"):
            out.append(f"fault {fault['kind']} could not be applied: {fault['error']}")
    return out


def summary_text(report: dict[str, Any]) -> str:
    calls = report["calls"]
    lines = [
        f"fault run: {'PASS' if not report['problems'] else 'FAIL'}",
        f"  calls: sent {calls['sent']}, completed {calls['completed']}, "
        f"failed {calls['failed']} {calls['failed_by_outcome'] or ''}".rstrip(),
        f"  completed calls whose token count is off (sent twice or lost): "
        f"{calls.get('token_count_mismatches', 'not counted')}",
        f"  ingress retries: {report['retries']} {report['retries_by_reason'] or ''}".rstrip(),
        f"  KV pulls failed at decode engines (handshake/transfer): "
        f"{report['kv_pull_failures_seen']}; prefill leases expired: "
        f"{report.get('kv_leases_expired', 0)}",
        f"  engines with stranded KV blocks after the run: "
        f"{sum(not v for v in report['blocks_free_after'].values())} of "
        f"{len(report['blocks_free_after'])} (blocks leaked: {report['blocks_leaked']})",
        f"  replicas killed: {len(report['killed'])}, replaced by Serve: "
        f"{len(report['replacement'].get('new_replicas', []))} in "
        f"{report['replacement']['seconds']:.0f}s",
    ]
    for f in report["faults"]:
        lines.append(f"  fault at {f['t_s']:6.1f}s: {f['kind']} {f.get('target', '')}"
                     f"{' ' + str(f['result']) if f.get('result') else ''}"
                     f"{' ERROR ' + f['error'] if f.get('error') else ''}")
    for p in report["problems"]:
        lines.append(f"  PROBLEM: {p}")
    return "\n".join(lines)
