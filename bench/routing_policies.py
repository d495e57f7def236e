"""Prefill routing policies on real engines: one policy per run, a skewed multi-agent workload
(a few heavy sessions with long, growing contexts + many light short ones arriving meanwhile)
over a shared prefill pool of 2+ replicas. Reports the hit ratio (vLLM's own counters, per
call and per replica), the load spread over the prefill replicas (requests and prompt tokens
actually computed) and p50/p95 latency. docs/routing.md has the results.

One policy per invocation so that a timing run holds the engine lock for one short batch:
    flock -x /tmp/prefillshare-engines.lock python -m bench.routing_policies run --policy session_sticky
    python -m bench.routing_policies report            # markdown table of every saved run
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from bench.driver import drive
from bench.metrics import summarize
from bench.records import RunResult
from bench.workload import Workload
from contract.routing_policies import ROUTING_POLICIES

ROLE = "agent"


def app_args(policy: str, model: str, replicas: int, engine: dict[str, Any],
             kv_events: bool) -> dict[str, Any]:
    """One shared prefill pool and one decode pool; the base model decodes (the comparison is
    about prefill placement, so one role keeps the engine count, and memory, down)."""
    return {
        "base_model": model,
        "prefill_pools": {"shared": {"replicas": replicas, "engine": engine}},
        "roles": [{"name": ROLE, "decode_pool": {"engine": engine}}],
        "routing": {"prefill_policy": policy, "kv_events": kv_events},
    }


def workloads(heavy_sessions: int, heavy_turns: int, light_sessions: int,
              output_tokens: int) -> dict[str, Workload]:
    """Heavy: long contexts, many turns, all arriving at once (the skew). Light: short
    contexts, two turns, a steady trickle over the same window."""
    common = {"roles": (ROLE,), "output_tokens": output_tokens, "request_timeout_s": 300.0,
              "max_run_s": 900.0}
    return {
        "heavy": Workload(turns=heavy_turns, initial_context_tokens=1200,
                          observation_tokens=(150, 300), arrival_rate=20.0,
                          max_concurrent_sessions=heavy_sessions, num_sessions=heavy_sessions,
                          seed=101, **common),
        "light": Workload(turns=2, initial_context_tokens=300, observation_tokens=(30, 80),
                          arrival_rate=0.25, max_concurrent_sessions=light_sessions,
                          num_sessions=light_sessions, seed=202, **common),
    }


def replica_counters(deployment: str) -> dict[str, dict[str, Any]]:
    """Each prefill replica's routing stats: its engine's own prefix-cache counters."""
    from bench.replicas import routing_stats
    from bench.running_app import APP

    return routing_stats(APP, deployment)


def spread(values: list[float]) -> dict[str, float | None]:
    if not values or sum(values) == 0:
        return {"max_over_mean": None, "cv": None}
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return {"max_over_mean": max(values) / mean, "cv": var ** 0.5 / mean}


def run_policy(policy: str, a: argparse.Namespace) -> dict[str, Any]:
    from bench.running_app import running_app

    engine = {"max_model_len": 8192, "kv_cache_space_gib": a.kv_cache_space_gib,
              "block_size": a.block_size}
    wls = workloads(a.heavy_sessions, a.heavy_turns, a.light_sessions, a.output_tokens)
    tag = secrets.token_hex(3)
    t0 = time.perf_counter()
    print(f"[routing-bench] {policy}: starting engines ...", file=sys.stderr, flush=True)
    with running_app(app_args(policy, a.model, a.prefill_replicas, engine, a.kv_events)) as app:
        print(f"[routing-bench] {policy}: up in {time.perf_counter() - t0:.0f}s", file=sys.stderr,
              flush=True)
        before = replica_counters("prefill-shared")

        async def both() -> list[RunResult]:
            return await asyncio.gather(*(
                drive(app.url, wl, stats_url=None, run_tag=f"{tag}{name[0]}", progress_s=15.0)
                for name, wl in wls.items()))

        heavy, light = asyncio.run(both())
        after = replica_counters("prefill-shared")
    merged = dataclasses.replace(heavy, calls=heavy.calls + light.calls,
                                 sessions=heavy.sessions + light.sessions)
    per_replica = {}
    for rid, c in after.items():
        b = before.get(rid, {})
        q = c.get("prefix_queries", 0) - b.get("prefix_queries", 0)
        h = c.get("prefix_hits", 0) - b.get("prefix_hits", 0)
        per_replica[rid] = {"requests": c.get("requests_finished", 0) - b.get("requests_finished", 0),
                            "prompt_tokens": q, "cached_tokens": h, "computed_tokens": q - h,
                            "hit_ratio": h / q if q else None}
    return {
        "policy": policy, "kv_events": a.kv_events, "model": a.model,
        "prefill_replicas": a.prefill_replicas, "run_tag": tag,
        "summary": summarize(merged, block_size=a.block_size),
        "heavy": summarize(heavy, block_size=a.block_size)["latency_s"]["call_e2e"],
        "light": summarize(light, block_size=a.block_size)["latency_s"]["call_e2e"],
        "per_replica": per_replica,
        "spread_requests": spread([r["requests"] for r in per_replica.values()]),
        "spread_computed_tokens": spread([r["computed_tokens"] for r in per_replica.values()]),
    }


def report(out_dir: Path) -> str:
    lines = ["| policy | kv events | hit ratio (calls) | best | engine hit per replica | "
             "requests per replica | computed tokens max/mean | p50 s | p95 s | heavy p95 s | "
             "light p95 s | failed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(out_dir.glob("*.json")):
        r = json.loads(path.read_text())
        s = r["summary"]
        e2e = s["latency_s"]["call_e2e"]
        reps = sorted(r["per_replica"].values(), key=lambda x: -x["requests"])
        hits = " / ".join(f"{x['hit_ratio']:.2f}" if x["hit_ratio"] is not None else "-" for x in reps)
        reqs = " / ".join(str(x["requests"]) for x in reps)
        mm = r["spread_computed_tokens"]["max_over_mean"]
        lines.append(
            f"| {r['policy']} | {'on' if r['kv_events'] else 'off'} | "
            f"{s['prefix_cache']['usage_hit_ratio'] or 0:.3f} | "
            f"{s['prefix_cache']['theoretical_best_hit_ratio'] or 0:.3f} | {hits} | {reqs} | "
            f"{mm if mm is None else f'{mm:.2f}'} | {e2e['p50']:.2f} | {e2e['p95']:.2f} | "
            f"{r['heavy']['p95']:.2f} | {r['light']['p95']:.2f} | {s['calls']['failed']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.routing_policies", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="start the app with one prefill policy and drive the workload")
    r.add_argument("--policy", required=True, choices=list(ROUTING_POLICIES))
    r.add_argument("--model", default="smollm2")
    r.add_argument("--prefill-replicas", type=int, default=2)
    r.add_argument("--kv-events", action="store_true", help="routing.kv_events on")
    r.add_argument("--heavy-sessions", type=int, default=2)
    r.add_argument("--heavy-turns", type=int, default=8)
    r.add_argument("--light-sessions", type=int, default=8)
    r.add_argument("--output-tokens", type=int, default=16)
    r.add_argument("--kv-cache-space-gib", type=float, default=1.0)
    r.add_argument("--block-size", type=int, default=128)
    r.add_argument("--out-dir", default="runs/routing-bench")
    rep = sub.add_parser("report", help="markdown table of the saved runs")
    rep.add_argument("--out-dir", default="runs/routing-bench")
    a = p.parse_args(argv)
    out_dir = Path(a.out_dir)
    if a.cmd == "report":
        if not out_dir.is_dir():
            print(f"no runs in {out_dir}", file=sys.stderr)
            return 2
        print(report(out_dir), end="")
        return 0
    if a.prefill_replicas < 2:
        print("--prefill-replicas must be at least 2 (a policy needs a choice)", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run_policy(a.policy, a)
    except Exception as exc:  # a failed run is reported, not a traceback
        print(f"[routing-bench] {a.policy} failed: {exc!r}", file=sys.stderr)
        return 1
    name = f"{a.policy}{'-kvev' if a.kv_events else ''}.json"
    (out_dir / name).write_text(json.dumps(result, indent=2, default=str))
    print(report(out_dir), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
