"""Runs the same multi-agent workload against the baseline and PrefillShare, one after the
other on this machine, sweeping load; writes JSON, a markdown summary with the ratios and PNG
plots (p95 latency and throughput vs load: the paper's Fig. 3 / Fig. 4 shapes).

    python -m bench.compare --help
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.driver import drive
from bench.metrics import summarize
from bench.topologies import app_args
from bench.workload import Workload


def run_topology(name: str, args: dict[str, Any], loads: list[tuple[float, int]],
                 base: Workload, block_size: int) -> list[dict[str, Any]]:
    from deployments.inprocess import running_app

    out = []
    t0 = time.perf_counter()
    print(f"[compare] {name}: starting engines ...", file=sys.stderr, flush=True)
    with running_app(args) as app:
        print(f"[compare] {name}: up in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        for rate, conc in loads:
            wl = base.model_copy(update={"arrival_rate": rate, "max_concurrent_sessions": conc})
            print(f"[compare] {name}: rate {rate}/s, max {conc} sessions", file=sys.stderr, flush=True)
            result = asyncio.run(drive(app.url, wl, stats_url=f"{app.url}/stats"))
            summary = summarize(result, block_size=block_size)
            out.append({"topology": name, "rate": rate, "max_concurrent": conc, "summary": summary})
    return out


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["topology"], r["rate"], r["max_concurrent"]): r["summary"] for r in rows}
    table = []
    for (topo, rate, conc), s in sorted(by.items()):
        if topo != "prefillshare" or ("baseline", rate, conc) not in by:
            continue
        b = by[("baseline", rate, conc)]
        table.append({
            "rate": rate, "max_concurrent": conc,
            "p95_baseline_s": b["latency_s"]["call_e2e"]["p95"],
            "p95_prefillshare_s": s["latency_s"]["call_e2e"]["p95"],
            "p95_ratio": b["latency_s"]["call_e2e"]["p95"] / s["latency_s"]["call_e2e"]["p95"],
            "tput_baseline": b["throughput"]["output_tok_s"],
            "tput_prefillshare": s["throughput"]["output_tok_s"],
            "tput_ratio": s["throughput"]["output_tok_s"] / b["throughput"]["output_tok_s"],
            "ttft_p95_baseline_s": b["latency_s"]["ttft"]["p95"],
            "ttft_p95_prefillshare_s": s["latency_s"]["ttft"]["p95"],
            # From each call's usage.cached_tokens (the prefill engine's own count), which
            # covers every replica; GET /stats samples one replica per deployment.
            "hit_baseline": b["prefix_cache"]["usage_hit_ratio"],
            "hit_prefillshare": s["prefix_cache"]["usage_hit_ratio"],
            "hit_best": s["prefix_cache"]["theoretical_best_hit_ratio"],
            "errors": b["errors"]["count"] + s["errors"]["count"],
        })
    return table


def plot(table: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [f"{r['rate']}/s\n≤{r['max_concurrent']}" for r in table]
    paths = []
    for base_key, ps_key, label, fname in (
            ("p95_baseline_s", "p95_prefillshare_s", "p95 end-to-end latency per call (s)",
             "bench_p95.png"),
            ("tput_baseline", "tput_prefillshare", "output tokens/s", "bench_throughput.png")):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(x, [r[base_key] for r in table], "o-", label="baseline (per-model P/D)")
        ax.plot(x, [r[ps_key] for r in table], "s-", label="PrefillShare")
        ax.set_xlabel("session arrival rate / max concurrent sessions")
        ax.set_ylabel(label)
        ax.legend()
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--roles", default="planner,coder", help="comma-separated agent roles")
    p.add_argument("--loads", default="0.05:2,0.2:4",
                   help="rate:max_concurrent pairs, comma-separated (sessions/s : sessions)")
    p.add_argument("--sessions", type=int, default=6, help="sessions per load point")
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--pattern", default="react", choices=["react", "reflexion"])
    p.add_argument("--initial-context-tokens", type=int, default=1000)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--kv-cache-space-gib", type=int, default=1)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--topologies", default="baseline,prefillshare")
    p.add_argument("--out-dir", default="runs/compare")
    a = p.parse_args(argv)

    roles = a.roles.split(",")
    loads = [(float(r), int(c)) for r, c in (x.split(":") for x in a.loads.split(","))]
    engine = {"max_model_len": 8192, "kv_cache_space_gib": a.kv_cache_space_gib,
              "block_size": a.block_size}
    wl = Workload(pattern=a.pattern, roles=tuple(roles), turns=a.turns,
                  initial_context_tokens=a.initial_context_tokens, output_tokens=a.output_tokens,
                  num_sessions=a.sessions, seed=0)
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for topo in a.topologies.split(","):
        rows += run_topology(topo, app_args(topo, roles, a.model, engine), loads, wl, a.block_size)
        (out_dir / "results.json").write_text(json.dumps(rows, indent=2, default=str))
    table = ratios(rows)
    (out_dir / "ratios.json").write_text(json.dumps(table, indent=2))
    if table:
        plot(table, out_dir)
    lines = ["| load | p95 base (s) | p95 PS (s) | p95 ratio | tok/s base | tok/s PS | tput ratio "
             "| TTFT p95 base | TTFT p95 PS | hit base | hit PS | best | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(
            f"| {r['rate']}/s ≤{r['max_concurrent']} | {r['p95_baseline_s']:.2f} | "
            f"{r['p95_prefillshare_s']:.2f} | {r['p95_ratio']:.2f}x | {r['tput_baseline']:.1f} | "
            f"{r['tput_prefillshare']:.1f} | {r['tput_ratio']:.2f}x | {r['ttft_p95_baseline_s']:.2f} | "
            f"{r['ttft_p95_prefillshare_s']:.2f} | {r['hit_baseline'] or 0:.2f} | "
            f"{r['hit_prefillshare'] or 0:.2f} | {r['hit_best']:.2f} | {r['errors']} |")
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
