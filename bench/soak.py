"""`prefillshare soak`: moderate multi-agent load for a long time (default 30 min) while the
memory of every Serve replica process is sampled; fails if any replica's memory grows beyond
a bound, or if a replica was replaced (killed: e.g. by Ray's memory monitor).

    flock -s /tmp/prefillshare-engines.lock prefillshare soak --out runs/soak

A memory-pressure run is the same with admission control on and more load than the engines
drain (``--max-waiting``/``--max-inflight``, a high ``--rate`` and ``--concurrency``): it
fails unless the overload is answered (503 ``overloaded``), every other call completes, and
no replica is killed (docs/reliability.md).

Starts the app in this process on 127.0.0.1 (bench/running_app.py): one shared prefill
replica and roles ``planner`` and ``critic`` with one decode replica each. bench.driver runs
sessions for ``--duration-min``; every ``--sample-s`` this process reads the RSS of each
replica process (replica actor + vLLM's EngineCore and workers, by pid, via psutil inside the
actor; also split by process kind) and whether it has served yet (its engine's finished
request count): a process's memory clock starts when it first served. Afterwards it groups calls into windows (requests, errors, p95 latency and TTFT) and
writes soak.json, soak.png (p95 and memory over time) and soak.md.
Exit codes: 0 ok, 1 memory grew beyond --max-growth-mib (or calls hung), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.fault_report import call_counts, overload_refusals
from bench.fault_run import _LoadThread
from bench.soak_report import markdown, memory_growth, plot, problems, windows
from bench.workload import Workload
from deployments.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def soak_app_args(models: str, kv_cache_space_gib: float, request_timeout_s: float = 150,
                  max_waiting: int | None = None, max_inflight: int | None = None,
                  max_num_seqs: int | None = None) -> dict[str, Any]:
    """max_waiting / max_inflight: admission control on every pool / the ingress (a
    memory-pressure run); None: off, as in the default app. max_num_seqs: every engine's."""
    from bench.app_models import base_decoder_engine

    base, decoder, engine = base_decoder_engine(models, kv_cache_space_gib)
    if max_num_seqs is not None:
        engine = {**engine, "max_num_seqs": max_num_seqs}
    pool = {"engine": engine, "max_waiting": max_waiting}
    args = {"base_model": base,
            "prefill_pools": {"shared": {"replicas": 1, **pool}},
            "roles": [{"name": r, "decoder": decoder, "decode_pool": pool}
                      for r in ("planner", "critic")],
            # The server answers (504) before the client's timeout: a client timeout is a hang.
            "timeouts": {"prefill_s": 60, "kv_pull_s": 60, "first_token_s": 60,
                         "request_s": request_timeout_s}}
    if max_inflight is not None:
        args["limits"] = {"max_inflight": max_inflight}
    return args


def mem_available_gib() -> float | None:
    """The node's MemAvailable: how close the box is to Ray's memory monitor (95% used)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return None


def soak_workload(args: argparse.Namespace) -> Workload:
    duration = args.duration_min * 60
    return Workload(pattern="react", turns=args.turns, initial_context_tokens=args.context_tokens,
                    output_tokens=args.output_tokens, observation_tokens=(30, 80),
                    arrival_rate=args.rate, max_concurrent_sessions=args.concurrency,
                    num_sessions=None, duration_s=duration, max_run_s=duration + 300,
                    request_timeout_s=args.client_timeout_s, seed=args.seed)


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    from bench import replicas as rep
    from bench.running_app import APP, running_app

    cfg = soak_app_args(args.models, args.kv_cache_space_gib, args.request_timeout_s,
                        args.max_waiting, args.max_inflight, args.max_num_seqs)
    print("[soak] starting the app (3 engines) ...", flush=True)
    with running_app(cfg) as running:
        load = _LoadThread(running.url, soak_workload(args))
        samples: list[dict[str, Any]] = []
        replicas_at_start = sorted(r.actor_name for r in rep.live_replicas(APP))
        load.start()
        t0 = time.monotonic()
        next_at = 0.0
        while load.is_alive():
            if time.monotonic() - t0 >= next_at:
                t = time.monotonic() - t0
                mem = rep.replica_memory(rep.live_replicas(APP))
                samples.append({"t_s": t, "replicas": mem,
                                "mem_available_gib": mem_available_gib()})
                total = sum(m["rss_mib"] for m in mem.values())
                kinds = {k: sum(m["parts"].get(k, 0.0) for m in mem.values())
                         for k in ("replica", "engine_core", "worker")}
                print(f"[soak {t / 60:5.1f} min] RSS of {len(mem)} replica processes: "
                      f"{total:.0f} MiB (" + ", ".join(f"{k} {v:.0f}" for k, v in kinds.items())
                      + ")", flush=True)
                next_at += args.sample_s
            time.sleep(0.5)
        samples.append({"t_s": time.monotonic() - t0,
                        "replicas": rep.replica_memory(rep.live_replicas(APP)),
                        "mem_available_gib": mem_available_gib()})
        replicas_at_end = sorted(r.actor_name for r in rep.live_replicas(APP))
        if load.error is not None or load.result is None:
            raise RuntimeError(f"the load driver failed: {load.error!r}")
    result = load.result
    counts = call_counts(result)
    duration = max((c.end_s for c in result.calls), default=0.0)
    report = {
        "command": " ".join(sys.argv), "models": args.models, "app_config": cfg,
        "workload": result.workload, "duration_s": duration, "window_s": args.sample_s,
        "warmup_s": args.warmup_s, "max_growth_mib": args.max_growth_mib,
        "calls": {**counts, "client_timeouts": counts["failed_by_outcome"].get("client_timeout", 0)},
        "windows": windows(result.calls, args.sample_s, duration),
        "memory": memory_growth(samples, skip_s=args.warmup_s),
        "memory_samples": samples,
        "admission": {"max_waiting": args.max_waiting, "max_inflight": args.max_inflight,
                      "max_num_seqs": args.max_num_seqs,
                      "refused_overloaded": overload_refusals(result)},
        "replicas": {"at_start": replicas_at_start, "at_end": replicas_at_end},
        "mem_available_min_gib": min((s["mem_available_gib"] for s in samples
                                      if s.get("mem_available_gib") is not None), default=None),
    }
    report["problems"] = problems(report, args.max_growth_mib)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefillshare soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--out", default="runs/soak", help="folder for soak.json, soak.png, soak.md")
    p.add_argument("--duration-min", type=float, default=30, help="sessions start this long")
    p.add_argument("--sample-s", type=float, default=60,
                   help="memory sample period and report window")
    p.add_argument("--warmup-s", type=float, default=120,
                   help="a process's memory growth is measured from its first samples this "
                        "long after it first served a request")
    p.add_argument("--max-growth-mib", type=float, default=256,
                   help="fail if a replica process grows more than this (warm start to end)")
    p.add_argument("--rate", type=float, default=0.15, help="session arrivals per second")
    p.add_argument("--concurrency", type=int, default=3, help="sessions at once")
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--context-tokens", type=int, default=300)
    p.add_argument("--output-tokens", type=int, default=24)
    p.add_argument("--request-timeout-s", type=float, default=150, help="timeouts.request_s")
    p.add_argument("--client-timeout-s", type=float, default=180,
                   help="a call with no answer by then counts as hung")
    p.add_argument("--kv-cache-space-gib", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-num-seqs", type=int, default=None,
                   help="requests one engine runs at once (default: the engine default)")
    p.add_argument("--max-waiting", type=int, default=None,
                   help="memory-pressure run: admission control on every pool (pool max_waiting)")
    p.add_argument("--max-inflight", type=int, default=None,
                   help="memory-pressure run: admission control at the ingress (limits.max_inflight)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration_min <= 0 or args.sample_s <= 0:
        print("prefillshare soak: --duration-min and --sample-s must be positive", file=sys.stderr)
        return EXIT_USAGE
    if args.client_timeout_s <= args.request_timeout_s:
        print("prefillshare soak: --client-timeout-s must exceed --request-timeout-s",
              file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = run_soak(args)
    (out / "soak.json").write_text(json.dumps(report, indent=2, default=str))
    plot(report, str(out / "soak.png"))
    text = markdown(report)
    (out / "soak.md").write_text(text)
    print(text, flush=True)
    print(f"[soak] wrote {out / 'soak.json'}, soak.png, soak.md", flush=True)
    return EXIT_OK if not report["problems"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
