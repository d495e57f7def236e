"""`prefillshare fault`: steady multi-agent load on the app while replicas die and KV pulls
fail; every call must complete or get a clear retryable error, none may hang, no engine may
keep KV blocks afterwards, and Serve must replace the dead replicas.

    flock -s /tmp/prefillshare-engines.lock prefillshare fault --out runs/fault

Starts the app in this process on 127.0.0.1 (bench/running_app.py): a shared prefill pool
of two replicas; role ``planner`` decodes on two replicas with kv_load_failure_policy ``fail``
(a failed pull makes the ingress prefill again), role ``critic`` on one with ``recompute`` (the
decode engine prefills locally). bench.driver replays sessions over both roles while this
process, on a schedule from the start of the load:
  1. arms KV pull failures on one replica of each decode pool (the next pulls go to an address
     where no prefill engine listens, so vLLM's own failure path runs);
  2. kills one prefill replica (Ray actor kill; in-flight prefills and pulls from it fail);
  3. kills a busy planner decode replica ``--decode-kills`` times, each after Serve replaced
     the one before (its streams continue on the other replica: mid-stream migration).
Every call streams with logprobs, so the run counts the tokens of each stream: none may be sent
twice or lost. Then it waits for Serve to replace the dead replicas, for the KV leases to run
out, and asks every engine replica whether it holds any KV block. Writes fault_run.json and
prints a summary. Every call must complete: the faults are the serving path's to absorb.
Exit codes: 0 every check passed, 1 a check failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.fault_report import call_counts, problems, summary_text
from bench.records import RunResult
from bench.workload import Workload
from contract.wire import ReplicaProbe
from deployments.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE

PREFILL = "prefill-shared"


def app_args(models: str, kv_cache_space_gib: float, max_retries: int,
             timeouts: dict[str, float]) -> dict[str, Any]:
    from bench.app_models import base_decoder_engine

    base, decoder, engine = base_decoder_engine(models, kv_cache_space_gib)
    return {
        "base_model": base,
        "prefill_pools": {"shared": {"replicas": 2, "engine": engine}},
        "roles": [
            {"name": "planner", "decoder": decoder, "kv_load_failure_policy": "fail",
             "decode_pool": {"replicas": 2, "engine": engine}},
            {"name": "critic", "decoder": decoder, "kv_load_failure_policy": "recompute",
             "decode_pool": {"replicas": 1, "engine": engine}},
        ],
        "routing": {"max_retries": max_retries},
        "timeouts": timeouts,
    }


def fault_workload(args: argparse.Namespace) -> Workload:
    return Workload(pattern="react", turns=args.turns, initial_context_tokens=args.context_tokens,
                    output_tokens=args.output_tokens, observation_tokens=(30, 80),
                    arrival_rate=args.rate, max_concurrent_sessions=args.concurrency,
                    num_sessions=None, duration_s=args.load_s, max_run_s=args.load_s + 300,
                    request_timeout_s=args.client_timeout_s, seed=args.seed,
                    count_streamed_tokens=True)


class _LoadThread(threading.Thread):
    """bench.driver in its own event loop, so this thread can apply faults meanwhile."""

    def __init__(self, url: str, workload: Workload) -> None:
        super().__init__(daemon=True)
        self.url, self.workload = url, workload
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self.started_at = time.monotonic()

    def run(self) -> None:
        from bench.driver import drive

        try:
            self.result = asyncio.run(drive(self.url, self.workload, progress_s=10.0))
        except BaseException as exc:  # reported by the caller
            self.error = exc


def _apply(faults: list[dict[str, Any]], t0: float, kind: str, target: str, fn: Any) -> None:
    entry: dict[str, Any] = {"t_s": time.monotonic() - t0, "kind": kind, "target": target}
    try:
        out = fn()
        if out is not None:
            entry["result"] = out
    except Exception as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
    faults.append(entry)
    print(f"[fault {entry['t_s']:6.1f}s] {kind} {target} {entry.get('error', '')}", flush=True)


def _sleep_until(t0: float, at_s: float, load: _LoadThread) -> None:
    while time.monotonic() - t0 < at_s and load.is_alive():
        time.sleep(0.5)


def _kill_when_busy(running: Any, candidates: list[Any], killed: list[Any],
                    busy: tuple[str, ...], wait_s: float = 15) -> dict[str, Any]:
    """Kill the first of ``candidates`` seen busy (each of its ``busy`` stats > 0: for a
    prefill replica ``inflight``; for a decode one also ``running``, its engine streaming
    tokens: vLLM's count of the last step, stale once idle, hence both), or the first after
    ``wait_s`` regardless: a kill between requests would test nothing in flight. Appends the
    one killed to ``killed``."""
    from bench.replicas import kill, probe

    deadline = time.monotonic() + wait_s
    victim, seen = candidates[0], 0
    while time.monotonic() < deadline and seen == 0:
        for replica in candidates:
            try:
                stats = probe(running.handle(replica.deployment), "stats",
                              replica.replica_id, timeout_s=5)
                seen = min(int(stats[key]) for key in busy)
            except Exception:
                seen = 0
            if seen > 0:
                victim = replica
                break
        else:
            time.sleep(0.02)
    kill(victim)
    killed.append(victim)
    return {"replica": victim.actor_name, f"{'_and_'.join(busy)}_at_kill": seen}


def _engine_totals(running: Any, replicas: list[Any]) -> dict[str, dict[str, Any]]:
    from bench.replicas import probe

    out = {}
    for r in replicas:
        if r.is_engine:
            try:
                out[f"{r.deployment}#{r.replica_id}"] = probe(running.handle(r.deployment),
                                                               "stats", r.replica_id)
            except Exception as exc:
                out[f"{r.deployment}#{r.replica_id}"] = {"error": str(exc)}
    return out


def run_faults(args: argparse.Namespace) -> tuple[dict[str, Any], RunResult]:
    from bench import replicas as rep
    from bench.running_app import APP, running_app

    timeouts = {"prefill_s": args.stage_timeout_s, "kv_pull_s": args.stage_timeout_s,
                "first_token_s": args.stage_timeout_s, "request_s": args.request_timeout_s}
    cfg = app_args(args.models, args.kv_cache_space_gib, args.max_retries, timeouts)
    print("[fault] starting the app (5 engines) ...", flush=True)
    with running_app(cfg, fault_injection=True) as running:
        before = rep.live_replicas(APP)
        layout = rep.by_deployment(before)
        print(f"[fault] replicas: {layout}", flush=True)
        stats_before = running.stats()
        load = _LoadThread(running.url, fault_workload(args))
        load.start()
        t0 = time.monotonic()
        faults: list[dict[str, Any]] = []
        killed: list[rep.Replica] = []
        planner = [r for r in before if r.deployment == "decode-planner"]
        critic = [r for r in before if r.deployment == "decode-critic"]
        prefill = [r for r in before if r.deployment == PREFILL]

        _sleep_until(t0, args.warmup_s, load)
        for pool, replica, n in (("decode-planner", planner[0], args.kv_failures),
                                 ("decode-critic", critic[0], 1)):
            _apply(faults, t0, "kv_pull_failure", f"{pool}#{replica.replica_id} x{n}",
                   lambda p=pool, r=replica, k=n: running.handle(p).fail_next_kv_pulls.remote(
                       k, ReplicaProbe.of(r.replica_id)).result(timeout_s=30))
        _sleep_until(t0, args.warmup_s + args.fault_gap_s, load)
        _apply(faults, t0, "kill_prefill_replica", PREFILL,
               lambda: _kill_when_busy(running, prefill[-1:], killed, ("inflight",)))
        for k in range(args.decode_kills):
            _sleep_until(t0, args.warmup_s + (2 + k) * args.fault_gap_s, load)
            if k > 0:  # one planner replica always serves: the last one killed is back first
                rep.wait_replaced(APP, layout, killed, timeout_s=args.recovery_timeout_s,
                                  healthy=lambda: rep.serve_app_running(APP))
            if not load.is_alive():
                faults.append({"t_s": time.monotonic() - t0, "kind": "kill_decode_replica",
                               "error": "the load ended first: raise --load-s"})
                break
            planner = [r for r in rep.live_replicas(APP) if r.deployment == "decode-planner"]
            _apply(faults, t0, "kill_decode_replica", "decode-planner",
                   lambda p=planner: _kill_when_busy(running, p, killed,
                                                   ("inflight", "running")))

        load.join()
        if load.error is not None or load.result is None:
            raise RuntimeError(f"the load driver failed: {load.error!r}")
        result = load.result
        print("[fault] load done; waiting for Serve to replace the killed replicas ...", flush=True)
        replacement = rep.wait_replaced(APP, layout, killed, timeout_s=args.recovery_timeout_s,
                                        healthy=lambda: rep.serve_app_running(APP))
        print(f"[fault] replacement: {replacement}", flush=True)
        after_ok = {}
        for role in ("planner", "critic"):
            r = running.client.post("/v1/completions", json={
                "model": role, "prompt": "after the faults", "max_tokens": 4})
            after_ok[role] = r.status_code == 200
        stats_after = running.stats()
        # Leases of pulls that never came run out after kv_lease_duration_s (30 s default).
        print("[fault] checking every engine replica for stranded KV blocks ...", flush=True)
        now = rep.live_replicas(APP)
        free = {f"{r.deployment}#{r.replica_id}": rep.wait_blocks_free(
                    running.handle(r.deployment), r.replica_id, timeout_s=args.leak_timeout_s)
                for r in now if r.is_engine}
        engines = _engine_totals(running, now)

    retries_by_reason = {k: v - stats_before.get("retries_by_reason", {}).get(k, 0)
                         for k, v in stats_after.get("retries_by_reason", {}).items()}
    report = {
        "command": " ".join(sys.argv),
        "models": args.models,
        "app_config": cfg,
        "workload": result.workload,
        "calls": call_counts(result),
        "sessions": {"started": sum(s.start_s is not None for s in result.sessions),
                     "completed": sum(s.ok for s in result.sessions)},
        "retries": stats_after["retries"] - stats_before["retries"],
        "retries_by_reason": retries_by_reason,
        "kv_pull_failures_seen": sum(int(e.get("kv_failed_handshakes", 0))
                                     + int(e.get("kv_failed_transfers", 0))
                                     for name, e in engines.items() if name.startswith("decode-")),
        "kv_leases_expired": sum(int(e.get("kv_expired_leases", 0)) for e in engines.values()),
        "faults": faults,
        "killed": [k.actor_name for k in killed],
        "replacement": replacement,
        "after_faults_ok": after_ok,
        "blocks_free_after": free,
        "blocks_leaked": 0 if all(free.values()) else None,
        "engines_after": engines,
    }
    report["problems"] = problems(report)
    return report, result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefillshare fault", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", choices=["tiny", "smollm2"], default="tiny",
                   help="tiny random models (fast) or SmolLM2-135M for every engine")
    p.add_argument("--out", default="runs/fault", help="folder for fault_run.json and calls.json")
    p.add_argument("--load-s", type=float, default=420, help="sessions start during this long")
    p.add_argument("--rate", type=float, default=0.5, help="session arrivals per second")
    p.add_argument("--concurrency", type=int, default=4, help="sessions at once")
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--context-tokens", type=int, default=300)
    p.add_argument("--output-tokens", type=int, default=48,
                   help="per call: a longer stream is likelier to be mid-way at a kill")
    p.add_argument("--warmup-s", type=float, default=20, help="load before the first fault")
    p.add_argument("--fault-gap-s", type=float, default=25, help="between faults")
    p.add_argument("--kv-failures", type=int, default=2,
                   help="KV pulls made to fail on one planner replica (critic: 1)")
    p.add_argument("--decode-kills", type=int, default=3,
                   help="planner decode replicas killed mid-stream, one after another")
    p.add_argument("--max-retries", type=int, default=2, help="routing.max_retries")
    p.add_argument("--stage-timeout-s", type=float, default=60,
                   help="timeouts.prefill_s, kv_pull_s and first_token_s")
    p.add_argument("--request-timeout-s", type=float, default=110, help="timeouts.request_s")
    p.add_argument("--client-timeout-s", type=float, default=150,
                   help="a call with no answer by then counts as hung")
    p.add_argument("--kv-cache-space-gib", type=float, default=0.25)
    p.add_argument("--recovery-timeout-s", type=float, default=300)
    p.add_argument("--leak-timeout-s", type=float, default=90,
                   help="per engine: how long blocks may stay held (leases expire after 30 s)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.client_timeout_s <= args.request_timeout_s:
        print("prefillshare fault: --client-timeout-s must exceed --request-timeout-s "
              "(the server must answer before the client gives up)", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report, result = run_faults(args)
    (out / "fault_run.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "calls.json").write_text(json.dumps(result.to_json(), default=str))
    text = summary_text(report)
    (out / "fault_run.txt").write_text(text + "\n")
    print(text, flush=True)
    print(f"[fault] wrote {out / 'fault_run.json'}", flush=True)
    return EXIT_OK if not report["problems"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
