"""Command line of the multi-agent benchmark driver. Starts no server: point it at one.

    python -m bench.run drive --url http://127.0.0.1:8000 --pattern react --rate 2 \\
        --max-concurrent 32 --sessions 100 --out runs/bench/react.json
    python -m bench.run smoke --url http://127.0.0.1:8000

``drive`` replays a workload (bench/workload.py), writes the run (every call) and its summary
as JSON and prints a markdown summary. ``smoke`` replays a tiny fixed workload (two sessions,
a few seconds) and exits non-zero if the bookkeeping does not add up; the fast test runs it
against the API on a fake backend. Topology sweeps build on ``bench.driver.drive`` and
``bench.metrics.summarize``. Against an app with ``auth.enabled``, put a key in the
environment variable PREFILLSHARE_API_KEY: it is sent as a bearer token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.driver import drive
from bench.metrics import DEFAULT_BLOCK_SIZE, summarize
from bench.records import RunResult
from bench.workload import Workload

API_KEY_ENV = "PREFILLSHARE_API_KEY"


def smoke_workload(pattern: str = "reflexion") -> Workload:
    return Workload(pattern=pattern, turns=2, initial_context_tokens=200, output_tokens=8,
                    observation_tokens=(20, 40), arrival_rate=5.0, max_concurrent_sessions=2,
                    num_sessions=2, max_run_s=60.0, request_timeout_s=30.0, seed=7)


def bookkeeping_problems(result: RunResult, summary: dict[str, Any]) -> list[str]:
    """What does not add up in a run that should have gone cleanly; empty when all is well."""
    problems = []
    calls = summary["calls"]
    if calls["sent"] != calls["completed"] + calls["failed"]:
        problems.append(f"calls sent {calls['sent']} != completed + failed {calls}")
    if summary["errors"]["count"]:
        problems.append(f"errors: {summary['errors']['examples']}")
    planned = Workload(**result.workload).calls_per_session()
    per_session: dict[str, int] = {}
    for c in result.calls:
        per_session[c.session] = per_session.get(c.session, 0) + 1
    for s in result.sessions:
        if per_session.get(s.session, 0) != planned or not s.ok:
            problems.append(f"session {s.session}: {per_session.get(s.session, 0)} calls "
                            f"of {planned}, error {s.error}")
    cache = summary["prefix_cache"]
    best, measured = cache["theoretical_best_hit_ratio"], cache["usage_hit_ratio"]
    if best is not None and measured is not None and measured > best + 1e-9:
        problems.append(f"usage hit ratio {measured:.3f} above the theoretical best {best:.3f}")
    for name in ("call_e2e", "ttft", "session_e2e"):
        d = summary["latency_s"][name]
        if d["p50"] is None or d["p95"] < d["p50"] or d["p99"] < d["p95"]:
            problems.append(f"{name} percentiles out of order: {d}")
    return problems


def markdown(summary: dict[str, Any]) -> str:
    def f(x: Any, fmt: str = ".3f") -> str:
        return "-" if x is None else format(x, fmt)

    lat, thr, cache = summary["latency_s"], summary["throughput"], summary["prefix_cache"]
    wl = summary["workload"]
    engine = cache["engine"] or {}
    kv = summary["kv_transfer"] or {}
    usage = summary["kv_cache_usage"] or {}
    rows = [
        ("workload", f"{wl['pattern']}, roles {','.join(wl['roles'])}, {wl['turns']} turns, "
                     f"{wl['arrival_rate']:g} sessions/s, cap {wl['max_concurrent_sessions']}"),
        ("sessions (completed/started/arrived)", "{completed}/{started}/{arrived}".format(
            **summary["sessions"])),
        ("calls (completed/sent), errors", f"{summary['calls']['completed']}/"
                                           f"{summary['calls']['sent']}, "
                                           f"{summary['errors']['count']}"),
        ("window s", f(summary["window_s"], ".1f")),
        ("call e2e p50 / p95 / p99 s", " / ".join(f(lat["call_e2e"][p]) for p in
                                                  ("p50", "p95", "p99"))),
        ("session e2e p50 / p95 / p99 s", " / ".join(f(lat["session_e2e"][p]) for p in
                                                     ("p50", "p95", "p99"))),
        ("TTFT p50 / p95 / p99 s", " / ".join(f(lat["ttft"][p]) for p in ("p50", "p95", "p99"))),
        ("session queue wait p95 s", f(lat["session_queue"]["p95"])),
        ("output tok/s, total tok/s", f"{f(thr['output_tok_s'], '.1f')}, "
                                      f"{f(thr['total_tok_s'], '.1f')}"),
        ("hit ratio: usage / engine", f"{f(cache['usage_hit_ratio'])} / "
                                      f"{f(engine.get('hit_ratio'))}"),
        (f"hit ratio best: session / same role (block {summary['block_size']})",
         f"{f(cache['theoretical_best_hit_ratio'])} / "
         f"{f(cache['theoretical_best_same_role_hit_ratio'])}"),
        ("KV transfers: n, MiB, s", f"{f(kv.get('transfers'), '.0f')}, "
                                    f"{f(None if not kv else kv['bytes'] / (1 << 20), '.1f')}, "
                                    f"{f(kv.get('seconds'))}"),
        ("KV usage max/mean: prefill, decode",
         ", ".join("-" if not usage.get(k) else f"{usage[k]['max']:.3f}/{usage[k]['mean']:.3f}"
                   for k in ("prefill", "decode"))),
    ]
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _workload_from_args(args: argparse.Namespace) -> Workload:
    base = json.loads(Path(args.workload).read_text()) if args.workload else {}
    flags = {"pattern": args.pattern, "roles": args.roles, "turns": args.turns,
             "initial_context_tokens": args.initial_context_tokens,
             "output_tokens": args.output_tokens, "observation_tokens": args.observation_tokens,
             "arrival_rate": args.rate, "max_concurrent_sessions": args.max_concurrent,
             "num_sessions": args.sessions, "duration_s": args.duration,
             "max_run_s": args.max_run_s, "seed": args.seed}
    return Workload(**{**base, **{k: v for k, v in flags.items() if v is not None}})


def _run(args: argparse.Namespace, workload: Workload) -> tuple[RunResult, dict[str, Any]]:
    stats_url = None if args.no_stats else (args.stats_url or f"{args.url.rstrip('/')}/stats")
    # The key comes from the environment, not a flag: command lines show up in `ps`.
    result = asyncio.run(drive(args.url, workload, stats_url=stats_url,
                               allow_remote=args.allow_remote,
                               api_key=os.environ.get(API_KEY_ENV) or None))
    summary = summarize(result, block_size=args.block_size)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"summary": summary, "run": result.to_json()}, indent=1))
        print(f"wrote {out}", file=sys.stderr)
    print(markdown(summary))
    return result, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (("drive", "replay a workload against a running URL"),
                            ("smoke", "a two-session check of a running URL")):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--url", default="http://127.0.0.1:8000")
        s.add_argument("--stats-url", help="engine counters (default: URL/stats; 404 is fine)")
        s.add_argument("--no-stats", action="store_true", help="do not read engine counters")
        s.add_argument("--allow-remote", action="store_true",
                       help="allow a non-loopback URL (a load generator: mind the target)")
        s.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE,
                       help="engines' KV block size, for the theoretical best hit ratio")
        s.add_argument("--out", help="write the run and its summary here (JSON)")
    d = sub.choices["drive"]
    d.add_argument("--workload", help="a JSON file of Workload fields; flags override it")
    d.add_argument("--pattern", choices=["react", "reflexion"])
    d.add_argument("--roles", nargs="+", help="default: the first four of /v1/models")
    d.add_argument("--turns", type=int)
    d.add_argument("--initial-context-tokens", type=int)
    d.add_argument("--output-tokens", type=int)
    d.add_argument("--observation-tokens", type=int, nargs=2, metavar=("MIN", "MAX"))
    d.add_argument("--rate", type=float, help="session arrivals per second (Poisson)")
    d.add_argument("--max-concurrent", type=int, help="most sessions running at once")
    d.add_argument("--sessions", type=int, help="sessions to run")
    d.add_argument("--duration", type=float, help="no session starts after this (s)")
    d.add_argument("--max-run-s", type=float, help="hard limit on the whole run (s)")
    d.add_argument("--seed", type=int)
    args = p.parse_args(argv)
    if args.command == "drive":
        _run(args, _workload_from_args(args))
        return 0
    result, summary = _run(args, smoke_workload())
    problems = bookkeeping_problems(result, summary)
    for problem in problems:
        print(f"smoke: {problem}", file=sys.stderr)
    print("smoke: ok" if not problems else "smoke: FAILED", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
