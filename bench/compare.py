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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.driver import drive
from bench.metrics import summarize
from bench.repeats import summarize_repeats, with_spread
from bench.systems import VLLM_LORA
from bench.topologies import TOPOLOGIES, app_args
from bench.workload import Workload


def engine_count(args: dict[str, Any]) -> dict[str, int]:
    """Engines a system of these args starts (prefill replicas, decode replicas; vllm-lora:
    one engine that does both, counted as decode)."""
    if "adapters" in args:  # vllm-lora
        return {"prefill": 0, "decode": 1}
    prefill = sum(p.get("replicas", 1) for p in args["prefill_pools"].values())
    decode = sum(r.get("decode_pool", {}).get("replicas", 1) for r in args["roles"]
                 if not r.get("lora_adapter"))
    if args.get("lora_pool") is not None:
        decode += args["lora_pool"].get("replicas", 1)
    return {"prefill": prefill, "decode": decode}


def run_topology(name: str, args: dict[str, Any], loads: list[tuple[float, int]],
                 base: Workload, block_size: int, *, kind: str | None = None,
                 log_dir: Path = Path("."), repeats: int = 1,
                 extra: dict[str, Any] | None = None,
                 on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Starts the system once, drives every load point ``repeats`` times against it (repeat i
    with seed base.seed + i: every topology gets the same arrivals per repeat); ``on_row``
    gets each row as soon as it is measured (a long sweep loses nothing if it dies later).
    Each row has the system's memory (RSS of all its processes) right after its run."""
    from bench.systems import running_system

    out = []
    t0 = time.perf_counter()
    print(f"[compare] {name}: starting engines ...", file=sys.stderr, flush=True)
    with running_system(kind or name, args, log_dir=log_dir) as system:
        up_s = time.perf_counter() - t0
        print(f"[compare] {name}: up in {up_s:.0f}s", file=sys.stderr, flush=True)
        for rate, conc in loads:
            for repeat in range(repeats):
                wl = base.model_copy(update={"arrival_rate": rate, "seed": base.seed + repeat,
                                             "max_concurrent_sessions": conc})
                print(f"[compare] {name}: rate {rate}/s, max {conc} sessions, repeat "
                      f"{repeat + 1}/{repeats}", file=sys.stderr, flush=True)
                result = asyncio.run(drive(system.url, wl, stats_url=system.stats_url))
                row = {"topology": name, "rate": rate, "max_concurrent": conc,
                       "repeat": repeat, "seed": wl.seed, "engines": engine_count(args),
                       "app_up_s": up_s, "memory": system.memory(), **(extra or {}),
                       "summary": summarize(result, block_size=block_size)}
                out.append(row)
                if on_row is not None:
                    on_row(row)
    return out


def _point(row: dict[str, Any]) -> tuple[float, int, Any]:
    """What makes two rows the same load point: load and the engines' KV space."""
    return row["rate"], row["max_concurrent"], row.get("prefill_kv_gib")


def ratios(rows: list[dict[str, Any]], baseline: str = "baseline",
           prefillshare: str = "prefillshare") -> list[dict[str, Any]]:
    """One line per load point measured on both ``baseline`` and ``prefillshare`` (labels
    as in the rows' ``topology``): the paper's ratios and the hit ratios beside the best.
    Rows of the same point with the same ``repeat`` index are paired (they ran the same
    arrivals); over several repeats each number is the median with its spread
    (bench/repeats.py)."""
    by: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["topology"], *_point(r)), {})[r.get("repeat", 0)] = r
    table = []
    for key in sorted({_point(r) for r in rows}, key=lambda k: (str(k[2]), k[0], k[1])):
        base, shared = by.get((baseline, *key), {}), by.get((prefillshare, *key), {})
        paired = sorted(set(base) & set(shared))
        if paired:
            table.append(summarize_repeats([_pair(key, base[i], shared[i]) for i in paired]))
    return table


def _pair(key: tuple[Any, ...], rb: dict[str, Any], rs: dict[str, Any]) -> dict[str, Any]:
    """The ratios of one repeat of one load point."""
    b, s = rb["summary"], rs["summary"]
    bp95, sp95 = b["latency_s"]["call_e2e"]["p95"], s["latency_s"]["call_e2e"]["p95"]
    bt, st = b["throughput"]["output_tok_s"], s["throughput"]["output_tok_s"]
    kv_b, kv_s = b.get("kv_transfer") or {}, s.get("kv_transfer") or {}
    return {
        "rate": key[0], "max_concurrent": key[1], "prefill_kv_gib": key[2],
        "engines_baseline": rb.get("engines"), "engines_prefillshare": rs.get("engines"),
        "p95_baseline_s": bp95, "p95_prefillshare_s": sp95,
        "p95_ratio": bp95 / sp95 if bp95 and sp95 else None,
        "p50_baseline_s": b["latency_s"]["call_e2e"]["p50"],
        "p50_prefillshare_s": s["latency_s"]["call_e2e"]["p50"],
        "tput_baseline": bt, "tput_prefillshare": st,
        "tput_ratio": st / bt if bt and st else None,
        "total_tok_s_baseline": b["throughput"]["total_tok_s"],
        "total_tok_s_prefillshare": s["throughput"]["total_tok_s"],
        "ttft_p95_baseline_s": b["latency_s"]["ttft"]["p95"],
        "ttft_p95_prefillshare_s": s["latency_s"]["ttft"]["p95"],
        # From each call's usage.cached_tokens (the prefill engine's own count per call),
        # which the vllm-lora system reports too; it has no GET /stats.
        "hit_baseline": b["prefix_cache"]["usage_hit_ratio"],
        "hit_prefillshare": s["prefix_cache"]["usage_hit_ratio"],
        "hit_best": s["prefix_cache"]["theoretical_best_hit_ratio"],
        "hit_best_same_role": b["prefix_cache"]["theoretical_best_same_role_hit_ratio"],
        "kv_mib_per_call_baseline": _mib_per_call(kv_b),
        "kv_mib_per_call_prefillshare": _mib_per_call(kv_s),
        # Prompt tokens the prefill engines computed (not served from cache): the work
        # PrefillShare removes; its ratio bounds the speedup when prefill is all there is.
        "prefill_computed_baseline": _computed(b),
        "prefill_computed_prefillshare": _computed(s),
        "prefill_work_ratio": (_computed(b) / _computed(s)
                               if _computed(b) and _computed(s) else None),
        # Memory of every process of each system after the run (rows written before it was
        # measured have none) and output throughput per GiB of it.
        "rss_gib_baseline": _rss_gib(rb), "rss_gib_prefillshare": _rss_gib(rs),
        "tput_per_gib_ratio": (st / _rss_gib(rs)) / (bt / _rss_gib(rb))
        if bt and st and _rss_gib(rb) and _rss_gib(rs) else None,
        "errors": b["errors"]["count"] + s["errors"]["count"],
    }


def _rss_gib(row: dict[str, Any]) -> float | None:
    return (row.get("memory") or {}).get("rss_gib")


def _computed(summary: dict[str, Any]) -> float | None:
    hit = summary["prefix_cache"]["usage_hit_ratio"]
    return None if hit is None else summary["throughput"]["prompt_tokens"] * (1 - hit)


def _mib_per_call(kv: dict[str, Any]) -> float | None:
    mean = kv.get("mean_bytes")
    return None if mean is None else mean / (1 << 20)


def plot(table: list[dict[str, Any]], out_dir: Path, prefix: str = "bench",
         labels: tuple[str, str] = ("baseline (per-model P/D)", "PrefillShare")) -> list[Path]:
    """p95 latency (Fig. 3 shape), throughput (Fig. 4 shape) and hit ratio vs load; the
    median over repeats, with min..max shaded. ``labels``: the two systems' legend names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several_kv = len({r.get("prefill_kv_gib") for r in table}) > 1  # a KV sweep's points
    x = [f"{r['rate']}/s\n≤{r['max_concurrent']}"
         + (f"\n{r.get('prefill_kv_gib')} GiB" if several_kv else "") for r in table]
    paths = []
    for base_key, ps_key, label, name in (
            ("p95_baseline_s", "p95_prefillshare_s", "p95 end-to-end latency per call (s)", "p95"),
            ("tput_baseline", "tput_prefillshare", "output tokens/s", "throughput"),
            ("hit_baseline", "hit_prefillshare", "prefill prefix-cache hit ratio", "hit_ratio")):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key, style, label_ in ((base_key, "o-", labels[0]), (ps_key, "s-", labels[1])):
            line, = ax.plot(x, [r[key] for r in table], style, label=label_)
            spread = [(r.get("spread") or {}).get(key) for r in table]
            if any(s_ is not None for s_ in spread):  # repeats: shade min..max
                ax.fill_between(x, [s_[0] if s_ else r[key] for s_, r in zip(spread, table)],
                                [s_[1] if s_ else r[key] for s_, r in zip(spread, table)],
                                color=line.get_color(), alpha=0.2)
        if name == "hit_ratio":
            ax.plot(x, [r["hit_best"] for r in table], "k--", label="workload best")
            ax.plot(x, [r["hit_best_same_role"] for r in table], "k:",
                    label="best with per-role caches")
            ax.set_ylim(0, 1)
        ax.set_xlabel("session arrival rate / max concurrent sessions")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{prefix}_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def markdown_table(table: list[dict[str, Any]]) -> str:
    """Medians, with (min-max) over the repeats where there were several."""
    lines = ["| load | prefill KV GiB | repeats | p95 base (s) | p95 PS (s) | p95 ratio "
             "| tok/s base | tok/s PS | tput ratio | TTFT p95 base | TTFT p95 PS | hit base "
             "| hit PS | best (per-role best) | prefill work ratio | RSS GiB base | RSS GiB PS "
             "| tok/s per GiB ratio | errors |",
             "|" + "---|" * 19]
    for r in table:
        def cell(key: str, fmt: str, suffix: str = "", line: dict[str, Any] = r) -> str:
            return with_spread(line, key, fmt, suffix)

        lines.append(
            f"| {r['rate']}/s ≤{r['max_concurrent']} | {cell('prefill_kv_gib', 'g')} "
            f"| {r.get('repeats', 1)} "
            f"| {cell('p95_baseline_s', '.2f')} | {cell('p95_prefillshare_s', '.2f')} "
            f"| {cell('p95_ratio', '.2f', 'x')} | {cell('tput_baseline', '.1f')} "
            f"| {cell('tput_prefillshare', '.1f')} | {cell('tput_ratio', '.2f', 'x')} "
            f"| {cell('ttft_p95_baseline_s', '.2f')} | {cell('ttft_p95_prefillshare_s', '.2f')} "
            f"| {cell('hit_baseline', '.2f')} | {cell('hit_prefillshare', '.2f')} "
            f"| {_plain(r['hit_best'], '.2f')} ({_plain(r['hit_best_same_role'], '.2f')}) "
            f"| {cell('prefill_work_ratio', '.2f', 'x')} | {cell('rss_gib_baseline', '.1f')} "
            f"| {cell('rss_gib_prefillshare', '.1f')} | {cell('tput_per_gib_ratio', '.2f', 'x')} "
            f"| {r['errors']} |")
    return "\n".join(lines) + "\n"


def _plain(x: Any, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def report(rows: list[dict[str, Any]], out_dir: Path, prefillshare: str = "prefillshare",
           prefix: str = "bench", baseline: str = "baseline") -> str:
    """ratios.json, the plots and summary.md for the rows; returns the markdown."""
    table = ratios(rows, baseline=baseline, prefillshare=prefillshare)
    (out_dir / f"{prefix}_ratios.json").write_text(json.dumps(table, indent=2))
    if table:
        names = {"baseline": "baseline (per-model P/D)", "prefillshare": "PrefillShare"}
        plot(table, out_dir, prefix, (names.get(baseline, baseline),
                                      names.get(prefillshare, prefillshare)))
    text = markdown_table(table)
    (out_dir / f"{prefix}_summary.md").write_text(text)
    return text


def _load_rows(paths: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in paths:
        rows += json.loads(Path(path).read_text())
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="alias or model folder (every engine)")
    p.add_argument("--roles", default="planner,coder", help="comma-separated agent roles")
    p.add_argument("--loads", default="0.05:2,0.2:4",
                   help="rate:max_concurrent pairs, comma-separated (sessions/s : sessions)")
    p.add_argument("--sessions", type=int, default=6, help="sessions per load point")
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--pattern", default="react", choices=["react", "reflexion"])
    p.add_argument("--initial-context-tokens", type=int, default=1000)
    p.add_argument("--observation-tokens", type=int, nargs=2, default=(100, 300),
                   metavar=("MIN", "MAX"))
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--kv-cache-space-gib", type=float, default=1.0,
                   help="KV space of every prefill engine (and decode engine unless "
                        "--decode-kv-cache-space-gib)")
    p.add_argument("--decode-kv-cache-space-gib", type=float)
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--decode-kv-mode", default="exact", choices=["exact", "reuse"],
                   help="PrefillShare's decode KV mode")
    p.add_argument("--topologies", default="baseline,prefillshare",
                   help=f"comma-separated, run in this order: {', '.join(TOPOLOGIES)}")
    p.add_argument("--adapters", help="the LoRA systems' adapters: a folder with one "
                   "subfolder per role (e.g. adapters/ for smollm2); default: random ones")
    p.add_argument("--lora-rank", type=int, default=8, help="of the random adapters; the "
                   "LoRA engines' max_lora_rank")
    p.add_argument("--label-suffix", default="",
                   help="appended to the prefillshare rows' label (e.g. -reuse)")
    p.add_argument("--seed", type=int, default=0, help="of the first repeat; repeat i: seed + i")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per load point (tables: the median and min-max)")
    p.add_argument("--max-run-s", type=float, default=900.0, help="per load point (hard limit)")
    p.add_argument("--request-timeout-s", type=float, default=300.0, help="per call")
    p.add_argument("--server-timeout-s", type=float, default=None,
                   help="every stage timeout of the app (prefill, KV pull, first token, "
                        "request; default: the app's own, 120 s per stage): an overloaded "
                        "topology's slow calls then finish instead of failing with 504")
    p.add_argument("--out-dir", default="runs/compare")
    p.add_argument("--from-results", nargs="+", metavar="JSON",
                   help="start nothing: report on these results.json files (merged)")
    p.add_argument("--prefillshare-label", default="prefillshare",
                   help="which prefillshare rows the report pairs with the baseline")
    p.add_argument("--baseline-label", default="baseline",
                   help="which rows the report compares against (e.g. vllm-lora)")
    p.add_argument("--prefix", default="bench", help="file name prefix of the report")
    a = p.parse_args(argv)

    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if a.from_results:
        print(report(_load_rows(a.from_results), out_dir, a.prefillshare_label, a.prefix,
                     a.baseline_label))
        return 0
    if a.repeats < 1:
        print("--repeats must be at least 1", file=sys.stderr)
        return 2
    if a.server_timeout_s is not None and a.server_timeout_s >= a.request_timeout_s:
        print("--server-timeout-s must be below --request-timeout-s: the server answers (504) "
              "before the client gives up", file=sys.stderr)
        return 2
    roles = a.roles.split(",")
    try:
        loads = [(float(r), int(c)) for r, c in (x.split(":") for x in a.loads.split(","))]
    except ValueError:
        print(f"bad --loads {a.loads!r}: want rate:max_concurrent,...", file=sys.stderr)
        return 2
    engine = {"max_model_len": a.max_model_len, "kv_cache_space_gib": a.kv_cache_space_gib,
              "block_size": a.block_size}
    decode_engine = {**engine, "kv_cache_space_gib": a.decode_kv_cache_space_gib
                     or a.kv_cache_space_gib}
    wl = Workload(pattern=a.pattern, roles=tuple(roles), turns=a.turns,
                  initial_context_tokens=a.initial_context_tokens, output_tokens=a.output_tokens,
                  observation_tokens=tuple(a.observation_tokens), num_sessions=a.sessions,
                  seed=a.seed, max_run_s=a.max_run_s, request_timeout_s=a.request_timeout_s)
    results = out_dir / "results.json"
    rows: list[dict[str, Any]] = json.loads(results.read_text()) if results.exists() else []

    def save(row: dict[str, Any]) -> None:
        rows.append(row)
        results.write_text(json.dumps(rows, indent=1, default=str))

    topologies = a.topologies.split(",")
    unknown = [t for t in topologies if t not in TOPOLOGIES]
    if unknown:
        print(f"unknown --topologies {unknown}: choose from {', '.join(TOPOLOGIES)}",
              file=sys.stderr)
        return 2
    adapters = None
    if any(t.endswith("-lora") for t in topologies):
        from bench.role_adapters import role_adapters

        adapters = role_adapters(a.model, roles, a.adapters, a.lora_rank)
    for topo in topologies:
        label = topo + (a.label_suffix if topo.startswith("prefillshare") else "")
        extra = {"kind": topo, "decode_kv_mode": a.decode_kv_mode if topo.startswith(
                 "prefillshare") else "exact", "prefill_kv_gib": a.kv_cache_space_gib,
                 "decode_kv_gib": decode_engine["kv_cache_space_gib"], "model": a.model}
        args = app_args(topo, roles, a.model, engine, decode_kv_mode=a.decode_kv_mode,
                        decode_engine=decode_engine, adapters=adapters, lora_rank=a.lora_rank)
        if a.server_timeout_s is not None and topo != VLLM_LORA:
            args["timeouts"] = {stage: a.server_timeout_s for stage in
                                ("prefill_s", "kv_pull_s", "first_token_s", "request_s")}
            extra["server_timeout_s"] = a.server_timeout_s
        run_topology(label, args, loads, wl, a.block_size, kind=topo, log_dir=out_dir,
                     repeats=a.repeats, extra=extra, on_row=save)
    print(report(rows, out_dir, a.prefillshare_label, a.prefix, a.baseline_label))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
