"""Every table and plot of docs/benchmarks.md's Benchmark v2 section, from the raw rows the
sweep wrote (OUT/<step>/results.json, committed): one command, no hand-assembled JSON.

    python -m bench.v2_report runs/issue16/quick --doc docs/benchmarks.md

Writes, into --out-dir: per pair of systems the paired-ratio table, its JSON and plots
(bench/compare.py's report: ratios per repeat, then the median with min-max), one table
of every system's own numbers per point, and the box's memory in use per step (the sweep's
OUT/mem_in_use.txt). With --doc, each generated table replaces the text
between the markers ``<!-- v2:NAME -->`` and ``<!-- /v2:NAME -->`` in that file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.compare import report
from bench.repeats import summarize_repeats, with_spread

SYSTEM_ORDER = ("baseline", "prefillshare", "prefillshare-lora", "vllm-lora")
# (baseline, PrefillShare) pairs the doc compares: the paper's, and the practitioner's.
PAIRS = (("baseline", "prefillshare"), ("baseline", "prefillshare-lora"),
         ("vllm-lora", "prefillshare-lora"), ("vllm-lora", "prefillshare"))


def load_rows(rows_dir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(rows_dir.glob("*/results.json")):
        for row in json.loads(path.read_text()):
            rows.append({**row, "sweep_step": path.parent.name})
    return rows


def _own_numbers(row: dict[str, Any]) -> dict[str, Any]:
    """One repeat of one system at one point: what the systems table shows."""
    s = row["summary"]
    rss = (row.get("memory") or {}).get("rss_gib")
    tput = s["throughput"]["output_tok_s"]
    return {"rate": row["rate"], "max_concurrent": row["max_concurrent"],
            "prefill_kv_gib": row.get("prefill_kv_gib"), "topology": row["topology"],
            "p50_s": s["latency_s"]["call_e2e"]["p50"], "p95_s": s["latency_s"]["call_e2e"]["p95"],
            "ttft_p95_s": s["latency_s"]["ttft"]["p95"], "tput": tput,
            "hit": s["prefix_cache"]["usage_hit_ratio"],
            "best": s["prefix_cache"]["theoretical_best_hit_ratio"],
            "completed": s["calls"]["completed"], "errors": s["errors"]["count"],
            "rss_gib": rss, "tput_per_gib": tput / rss if tput and rss else None}


def system_lines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (point, system): the median over its repeats, with the spread."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        line = _own_numbers(row)
        groups[(str(line["prefill_kv_gib"]), line["rate"], line["max_concurrent"],
                _system_rank(line["topology"]))].append(line)
    return [summarize_repeats(groups[k]) for k in sorted(groups)]


def _system_rank(name: str) -> tuple[int, str]:
    return (SYSTEM_ORDER.index(name) if name in SYSTEM_ORDER else len(SYSTEM_ORDER), name)


def systems_table(lines: list[dict[str, Any]]) -> str:
    out = ["| load | prefill KV GiB | system | repeats | p50 (s) | p95 (s) | TTFT p95 (s) "
           "| output tok/s | hit | best | calls done | failed | RSS GiB | tok/s per GiB |",
           "|" + "---|" * 14]
    for r in lines:
        def cell(key: str, fmt: str, line: dict[str, Any] = r) -> str:
            return with_spread(line, key, fmt)

        out.append(
            f"| {r['rate']}/s ≤{r['max_concurrent']} | {r['prefill_kv_gib']} | {r['topology']} "
            f"| {r['repeats']} | {cell('p50_s', '.2f')} | {cell('p95_s', '.2f')} "
            f"| {cell('ttft_p95_s', '.2f')} | {cell('tput', '.2f')} "
            f"| {cell('hit', '.2f')} | {cell('best', '.2f')} | {cell('completed', 'g')} "
            f"| {r['errors']} | {cell('rss_gib', '.1f')} | {cell('tput_per_gib', '.2f')} |")
    return "\n".join(out) + "\n"


def box_memory(samples_text: str, rows: list[dict[str, Any]]) -> str:
    """The box's memory in use (MemTotal - MemAvailable: every process, Ray's own included,
    each shared page once) while each step's system was up, from the sweep's 20 s samples
    (``time step GiB`` lines); a markdown table, one line per step."""
    by_step: dict[str, list[float]] = defaultdict(list)
    for line in samples_text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            by_step[parts[1].rstrip(":")].append(float(parts[2]))
    systems = {r["sweep_step"]: (r["topology"], r.get("prefill_kv_gib")) for r in rows}
    out = ["| step | system | prefill KV GiB | samples | peak GiB in use | median GiB in use |",
           "|" + "---|" * 6]
    for step in sorted(by_step, key=lambda name: (name not in systems, name)):
        values = sorted(by_step[step])
        system, kv = systems.get(step, ("-", "-"))
        out.append(f"| {step} | {system} | {kv} | {len(values)} | {values[-1]:.1f} "
                   f"| {values[len(values) // 2]:.1f} |")
    return "\n".join(out) + "\n"


def splice(doc: str, name: str, content: str) -> str:
    """``doc`` with the text between ``<!-- v2:name -->`` and ``<!-- /v2:name -->`` replaced."""
    pattern = re.compile(rf"(<!-- v2:{re.escape(name)} -->\n).*?(<!-- /v2:{re.escape(name)} -->)",
                         re.S)
    if not pattern.search(doc):
        raise KeyError(f"no <!-- v2:{name} --> ... <!-- /v2:{name} --> markers")
    return pattern.sub(lambda m: m.group(1) + content + m.group(2), doc, count=1)


def generate(rows: list[dict[str, Any]], out_dir: Path, prefix: str,
             memory_samples: str | None = None) -> dict[str, str]:
    """Writes every table's files; returns {marker name: markdown}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {"systems": systems_table(system_lines(rows))}
    (out_dir / f"{prefix}_systems.md").write_text(tables["systems"])
    if memory_samples is not None:
        tables["memory"] = box_memory(memory_samples, rows)
        (out_dir / f"{prefix}_memory.md").write_text(tables["memory"])
    present = {r["topology"] for r in rows}
    for base, ps in PAIRS:
        if {base, ps} <= present:
            name = f"{ps}_vs_{base}"
            tables[name] = report(rows, out_dir, prefillshare=ps, prefix=f"{prefix}_{name}",
                                  baseline=base)
    return tables


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.v2_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows_dir", type=Path, help="the sweep's OUT folder (OUT/*/results.json)")
    p.add_argument("--out-dir", type=Path, default=Path("docs"))
    p.add_argument("--prefix", default="v2", help="file name prefix of every output")
    p.add_argument("--doc", type=Path, help="a markdown file with <!-- v2:NAME --> markers "
                   "to fill in (NAME: systems, or PS_vs_BASE of each pair)")
    a = p.parse_args(argv)
    rows = load_rows(a.rows_dir)
    if not rows:
        print(f"no rows under {a.rows_dir}/*/results.json", file=sys.stderr)
        return 2
    samples = a.rows_dir / "mem_in_use.txt"
    tables = generate(rows, a.out_dir, a.prefix,
                      samples.read_text() if samples.exists() else None)
    print(f"[v2_report] {len(rows)} rows -> {', '.join(sorted(tables))} in {a.out_dir}")
    if a.doc is not None:
        doc = a.doc.read_text()
        for name, text in tables.items():
            try:
                doc = splice(doc, name, text)
            except KeyError:
                print(f"[v2_report] {a.doc} has no markers for {name}: not inserted")
        a.doc.write_text(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
