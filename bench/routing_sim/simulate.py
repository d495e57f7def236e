"""CLI: run the routing scenarios against every policy and print (and plot) the comparison.

    python -m bench.routing_sim.simulate                 # all scenarios, markdown table
    python -m bench.routing_sim.simulate --plot-dir docs # also docs/routing_*.png

Runs on one core in about a minute at the default duration; plain Python, no Ray.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.routing_sim.scenarios import policies, scenarios
from bench.routing_sim.simulation import RunResult, simulate

COLUMNS = ("scenario", "policy", "requests", "hit_ratio", "best_hit_ratio", "p50_s", "p95_s",
           "util_mean", "util_max_over_mean", "util_cv", "retries")


def run_all(duration_s: float, seed: int, only_scenarios: Sequence[str] = (),
            only_policies: Sequence[str] = ()) -> list[RunResult]:
    out = []
    for sc in scenarios(duration_s, seed):
        if only_scenarios and sc.name not in only_scenarios:
            continue
        for name, make in policies(sc.service).items():
            if only_policies and name not in only_policies:
                continue
            out.append(simulate(sc, make, name))
    return out


def markdown_table(results: Sequence[RunResult]) -> str:
    head = "| scenario | policy | hit ratio | best | p50 s | p95 s | util mean | util max/mean | util CV | retries |"
    lines = [head, "|" + "---|" * 10]
    for r in results:
        lines.append(f"| {r.scenario} | {r.policy} | {r.hit_ratio:.3f} | {r.best_hit_ratio:.3f} | "
                     f"{r.p50_s:.3f} | {r.p95_s:.3f} | {r.util_mean:.2f} | "
                     f"{r.util_max_over_mean:.2f} | {r.util_cv:.2f} | {r.retries} |")
    return "\n".join(lines)


def plot(results: Sequence[RunResult], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scen = list(dict.fromkeys(r.scenario for r in results))
    pols = list(dict.fromkeys(r.policy for r in results))
    by = {(r.scenario, r.policy): r for r in results}
    width = 0.8 / len(pols)
    paths = []
    for metric, label, fname, log in (("hit_ratio", "prefix hit ratio", "routing_hit_ratio.png", False),
                                      ("p95_s", "p95 prefill latency (s)", "routing_p95.png", True)):
        fig, ax = plt.subplots(figsize=(10, 4.2))
        for i, p in enumerate(pols):
            xs = [j + (i - (len(pols) - 1) / 2) * width for j in range(len(scen))]
            ax.bar(xs, [getattr(by[(s, p)], metric) for s in scen], width, label=p)
        if metric == "hit_ratio":
            for j, s in enumerate(scen):
                best = by[(s, pols[0])].best_hit_ratio
                ax.hlines(best, j - 0.42, j + 0.42, colors="k", linestyles="dashed",
                          label="workload best" if j == 0 else None)
            ax.set_ylim(0, 1)
        if log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(scen)), scen)
        ax.set_ylabel(label)
        ax.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.routing_sim.simulate",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=240.0, help="session arrival window, s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenarios", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--policies", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--plot-dir", type=Path, default=None, help="write routing_*.png here")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = run_all(args.duration, args.seed, _split(args.scenarios), _split(args.policies))
    print(markdown_table(results))
    if args.json:
        rows = [{k: getattr(r, k) for k in COLUMNS} for r in results]
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.plot_dir:
        for p in plot(results, args.plot_dir):
            print(f"wrote {p}", file=sys.stderr)
    print(f"{len(results)} runs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def _split(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


if __name__ == "__main__":
    raise SystemExit(main())
