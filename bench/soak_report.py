"""A soak run's numbers over time: per window requests, errors and p95 latency; per replica
process RSS at start and end and its growth. Pure functions over the driver's call records
and the memory samples bench/soak.py took, plus the PNG and the markdown report.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from bench.metrics import percentile
from bench.records import CallRecord


def windows(calls: Sequence[CallRecord], window_s: float, total_s: float) -> list[dict[str, Any]]:
    """Calls grouped by the window their answer ended in: [t, t + window_s)."""
    out = []
    n = max(1, int(total_s // window_s) + (total_s % window_s > 0))
    for i in range(n):
        lo, hi = i * window_s, (i + 1) * window_s
        ended = [c for c in calls if lo <= c.end_s < hi]
        ok = [c for c in ended if c.ok]
        out.append({
            "t_start_s": lo, "t_end_s": hi, "requests": len(ended),
            "errors": len(ended) - len(ok),
            "p95_e2e_s": percentile([c.e2e_s for c in ok], 95),
            "p95_ttft_s": percentile([c.ttft_s for c in ok if c.ttft_s is not None], 95),
        })
    return out


def memory_growth(samples: Sequence[dict[str, Any]], skip_s: float,
                  edge: int = 3) -> dict[str, dict[str, Any]]:
    """Per replica process (actor name + pid: a replaced replica is a new process): RSS at its
    first sample, the median of its first ``edge`` warm samples and of its last ``edge``, the
    growth between those two (in all and by process kind where the samples say), and a
    least-squares slope in MiB/hour. Its memory clock starts when it first served (a sample
    with ``served`` > 0; samples without that field count as serving), plus ``skip_s``: an
    engine's start-up and first requests are not growth, and a replacement replica gets its
    own clock. A process with fewer than two warm samples gets no growth (None)."""
    series: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for s in samples:
        for name, m in s["replicas"].items():
            series.setdefault(f"{name} pid {int(m['pid'])}", []).append((s["t_s"], m))
    out = {}
    for key, points in series.items():
        serving = [t for t, m in points if m.get("served") is None or m["served"] > 0]
        warm = [(t, m) for t, m in points if serving and t >= serving[0] + skip_s]
        row: dict[str, Any] = {"first_mib": points[0][1]["rss_mib"], "start_mib": None,
                               "end_mib": points[-1][1]["rss_mib"], "growth_mib": None,
                               "slope_mib_per_h": None, "growth_by_part_mib": {},
                               "serving_from_s": serving[0] if serving else None,
                               "samples": len(points), "span_s": points[-1][0] - points[0][0]}
        if len(warm) >= 2:
            row["start_mib"] = _median_of(warm[:edge], "rss_mib")
            row["end_mib"] = _median_of(warm[-edge:], "rss_mib")
            row["growth_mib"] = row["end_mib"] - row["start_mib"]
            row["slope_mib_per_h"] = _slope([(t, m["rss_mib"]) for t, m in warm]) * 3600
            row["span_s"] = warm[-1][0] - warm[0][0]
            parts = set().union(*(m.get("parts", {}) for _, m in warm))
            row["growth_by_part_mib"] = {
                part: _median_of(warm[-edge:], "parts", part) - _median_of(warm[:edge], "parts", part)
                for part in sorted(parts)}
        out[key] = row
    return out


def _median_of(points: Sequence[tuple[float, dict[str, Any]]], field: str,
               part: str | None = None) -> float:
    values = [m[field] if part is None else m.get(field, {}).get(part, 0.0) for _, m in points]
    return statistics.median(values)


def _slope(points: Sequence[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def problems(report: dict[str, Any], max_growth_mib: float) -> list[str]:
    out = []
    for name, g in report["memory"].items():
        if g["growth_mib"] is not None and g["growth_mib"] > max_growth_mib:
            out.append(f"{name}: RSS grew {g['growth_mib']:.0f} MiB "
                       f"({g['start_mib']:.0f} -> {g['end_mib']:.0f}), bound {max_growth_mib:g}")
    calls = report["calls"]
    if calls["sent"] == 0:
        out.append("no calls were sent")
    hung = calls["client_timeouts"]
    if hung:
        out.append(f"{hung} call(s) hung until the client timeout")
    replicas = report.get("replicas")
    if replicas:
        gone = sorted(set(replicas["at_start"]) - set(replicas["at_end"]))
        if gone:
            out.append(f"replica(s) killed or replaced during the run: {gone}")
    admission = report.get("admission") or {}
    if _admission_on(admission):
        refused = admission["refused_overloaded"]["total"]
        if not refused:
            out.append("admission control refused nothing: the load never reached the limits")
        other = calls["failed"] - refused
        if other:
            out.append(f"{other} call(s) failed other than by an overload refusal")
    return out


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    ws = report["windows"]
    mids = [(w["t_start_s"] + w["t_end_s"]) / 120 for w in ws]
    lat.plot(mids, [w["p95_e2e_s"] for w in ws], marker="o", label="p95 call latency")
    lat.plot(mids, [w["p95_ttft_s"] for w in ws], marker=".", label="p95 TTFT")
    lat.set_ylabel("seconds")
    lat.set_title(f"soak: p95 per {report['window_s']:g} s window")
    lat.legend()
    lat.grid(alpha=0.3)
    series: dict[str, list[tuple[float, float]]] = {}
    for s in report["memory_samples"]:
        for name, m in s["replicas"].items():
            short = name.split("#", 1)[-1]
            series.setdefault(short, []).append((s["t_s"] / 60, m["rss_mib"]))
    for name, pts in sorted(series.items()):
        mem.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
    mem.set_xlabel("minutes since the load started")
    mem.set_ylabel("RSS MiB (replica + engine processes)")
    mem.set_title("memory per replica process")
    mem.legend(fontsize=7)
    mem.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _admission_on(admission: dict[str, Any]) -> bool:
    return admission.get("max_waiting") is not None or admission.get("max_inflight") is not None


def _admission(report: dict[str, Any]) -> str:
    a = report.get("admission") or {}
    if not _admission_on(a):
        return "off"
    refused = a["refused_overloaded"]
    return (f"engine max_num_seqs {a.get('max_num_seqs')}, pool max_waiting "
            f"{a.get('max_waiting')}, ingress max_inflight {a.get('max_inflight')}: "
            f"{refused['total']} call(s) refused 503 overloaded ({refused['ingress']} by the "
            f"ingress, {refused['engine']} by an engine)")


def _replicas_kept(report: dict[str, Any]) -> str:
    replicas = report.get("replicas") or {"at_start": [], "at_end": []}
    kept = set(replicas["at_start"]) & set(replicas["at_end"])
    return f"replicas alive at the end: {len(kept)} of the {len(replicas['at_start'])} at start"


def markdown(report: dict[str, Any]) -> str:
    def f(x: Any, fmt: str = ".2f") -> str:
        return "-" if x is None else format(x, fmt)

    calls = report["calls"]
    lines = [
        f"# Soak run: {'PASS' if not report['problems'] else 'FAIL'}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"- duration {report['duration_s'] / 60:.1f} min of load, models {report['models']}, "
        f"windows of {report['window_s']:g} s",
        f"- calls: sent {calls['sent']}, completed {calls['completed']}, failed "
        f"{calls['failed']} {calls['failed_by_outcome'] or ''}",
        f"- memory bound: growth <= {report['max_growth_mib']:g} MiB per replica process "
        f"(warm start = {report['warmup_s']:g} s after a process first served)",
        f"- admission control: {_admission(report)}",
        f"- lowest MemAvailable of the node: {f(report.get('mem_available_min_gib'))} GiB; "
        f"{_replicas_kept(report)}",
        "",
        "| window (min) | requests | errors | p95 latency s | p95 TTFT s |",
        "|---|---|---|---|---|",
    ]
    for w in report["windows"]:
        lines.append(f"| {w['t_start_s'] / 60:.1f}-{w['t_end_s'] / 60:.1f} | {w['requests']} | "
                     f"{w['errors']} | {f(w['p95_e2e_s'])} | {f(w['p95_ttft_s'])} |")
    lines += ["", "| replica process | serving from (min) | first MiB | warm start MiB | "
              "end MiB | growth MiB | growth by process MiB | slope MiB/h |",
              "|---|---|---|---|---|---|---|---|"]
    for name, g in sorted(report["memory"].items()):
        by_part = ", ".join(f"{part} {v:+.0f}" for part, v in g.get("growth_by_part_mib", {}).items()
                            if part != "other" or v) or "-"
        serving = g.get("serving_from_s")
        lines.append(f"| {name} | {f(None if serving is None else serving / 60, '.1f')} | "
                     f"{g['first_mib']:.0f} | {f(g['start_mib'], '.0f')} | "
                     f"{g['end_mib']:.0f} | {f(g['growth_mib'], '+.0f')} | {by_part} | "
                     f"{f(g['slope_mib_per_h'], '+.0f')} |")
    lines.append("")
    for p in report["problems"]:
        lines.append(f"- PROBLEM: {p}")
    return "\n".join(lines) + "\n"
