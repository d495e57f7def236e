"""Turns a RunResult into the benchmark's numbers (the paper's: p95 latency, throughput, TTFT,
prefix-cache hit ratio) plus what explains them (KV transfers, KV memory, the best hit ratio
the workload allows). Pure functions over recorded data, so a saved run can be re-summarized.

Hit ratios come from three places and mean different things:
- ``usage``: cached/prompt tokens as the API reported them per call (the prefill pool's prefix
  cache, as seen by each request);
- ``engine``: the prefill engines' own prefix-cache counters (tokens hit / tokens looked up),
  diffed over the run and summed over prefill deployments and their live replicas (GET /stats
  asks every replica; before issue 16 it asked one per deployment). A replica replaced during
  the run restarts its counters, so the engine numbers hold for runs without replica deaths;
- ``theoretical best``: for each call, the tokens of its prompt that an earlier prompt of the
  same session already held, rounded down to whole KV blocks and never the last prompt token
  (an engine must compute it), over all prompt tokens. Only token COUNTS are recorded, so the
  shared part of prompt k with an earlier prompt j is bounded by min(len j, len k - 1): each
  call's context extends every earlier context of its session, but the role's trailing
  instructions in prompt j are not part of prompt k, so this is an upper bound that is tight
  up to that suffix (exact for roles without instructions). ``same_role`` counts only earlier
  prompts of the same role: the best a topology with one prefix cache per role can do.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from bench.records import CallRecord, RunResult, StatsSample

DEFAULT_BLOCK_SIZE = 128  # contract.config.EngineConfig.block_size's default


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    return {"n": len(values), "mean": statistics.fmean(values) if values else None,
            "p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": max(values) if values else None}


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _by_session(calls: Iterable[CallRecord]) -> dict[str, list[CallRecord]]:
    out: dict[str, list[CallRecord]] = defaultdict(list)
    for c in calls:
        out[c.session].append(c)
    for session_calls in out.values():
        session_calls.sort(key=lambda c: c.step)
    return out


def reusable_tokens(prompts: Sequence[tuple[str, int]], block_size: int,
                    same_role: bool = False) -> list[int]:
    """For one session's calls in order, as (role, prompt tokens): the tokens of each prompt an
    earlier prompt already held, in whole blocks (see the module docstring)."""
    out: list[int] = []
    longest: dict[str | None, int] = {}
    for role, length in prompts:
        key = role if same_role else None
        earlier = longest.get(key, 0)
        shared = max(min(earlier, length - 1), 0)
        out.append(shared // block_size * block_size)
        longest[key] = max(earlier, length)
    return out


def theoretical_best_hit_ratio(calls: Iterable[CallRecord], block_size: int,
                               same_role: bool = False) -> float | None:
    reused = total = 0
    for session_calls in _by_session(c for c in calls if c.prompt_tokens is not None).values():
        prompts = [(c.role, c.prompt_tokens or 0) for c in session_calls]
        reused += sum(reusable_tokens(prompts, block_size, same_role))
        total += sum(p for _, p in prompts)
    return _ratio(reused, total)


def usage_hit_ratio(calls: Iterable[CallRecord]) -> float | None:
    """Cached over prompt tokens of the calls that reported both; None if none did."""
    pairs = [(c.cached_tokens, c.prompt_tokens) for c in calls
             if c.cached_tokens is not None and c.prompt_tokens is not None]
    return _ratio(sum(c for c, _ in pairs), sum(p for _, p in pairs)) if pairs else None


def counter_diff(before: StatsSample | None, after: StatsSample | None, kind: str,
                 key: str) -> float | None:
    """after - before of one counter, summed over the deployments of ``kind``."""
    if before is None or after is None:
        return None
    old = before.stats.get(kind) or {}
    total = 0.0
    for name, counters in (after.stats.get(kind) or {}).items():
        if key in counters:
            total += counters[key] - (old.get(name) or {}).get(key, 0)
    return total


def engine_prefix_cache(result: RunResult) -> dict[str, float | None] | None:
    hits = counter_diff(result.stats_before, result.stats_after, "prefill", "prefix_hits")
    queries = counter_diff(result.stats_before, result.stats_after, "prefill", "prefix_queries")
    if hits is None or queries is None:
        return None
    return {"hits": hits, "queries": queries, "hit_ratio": _ratio(hits, queries)}


def kv_transfers(result: RunResult) -> dict[str, float | None] | None:
    diff = {key: counter_diff(result.stats_before, result.stats_after, "decode", key)
            for key in ("kv_transfers", "kv_bytes", "kv_transfer_s", "kv_failed_transfers")}
    n, nbytes, seconds = diff["kv_transfers"], diff["kv_bytes"], diff["kv_transfer_s"]
    if n is None or nbytes is None or seconds is None:
        return None
    return {"transfers": n, "bytes": nbytes, "seconds": seconds,
            "failed": diff["kv_failed_transfers"], "mean_bytes": _ratio(nbytes, n),
            "mean_s": _ratio(seconds, n),
            "gib_per_s": _ratio(nbytes / (1 << 30), seconds)}


def kv_cache_usage(result: RunResult) -> dict[str, Any] | None:
    """Fraction of KV blocks in use, sampled during the run: max and mean per pool kind and
    per deployment (the mean is over samples and, for a kind, over its deployments)."""
    if not result.stats_samples:
        return None
    per_dep: dict[tuple[str, str], list[float]] = defaultdict(list)
    for sample in result.stats_samples:
        for kind in ("prefill", "decode"):
            for name, counters in (sample.stats.get(kind) or {}).items():
                if "kv_cache_usage" in counters:
                    per_dep[(kind, name)].append(float(counters["kv_cache_usage"]))
    out: dict[str, Any] = {"samples": len(result.stats_samples), "per_deployment": {}}
    for kind in ("prefill", "decode"):
        values = [v for (k, _), vs in per_dep.items() if k == kind for v in vs]
        out[kind] = ({"max": max(values), "mean": statistics.fmean(values)} if values else None)
    for (kind, name), vs in sorted(per_dep.items()):
        out["per_deployment"][name] = {"kind": kind, "max": max(vs), "mean": statistics.fmean(vs)}
    return out


def _session_counts(result: RunResult) -> dict[str, int]:
    sessions = result.sessions
    return {"arrived": len(sessions),
            "started": sum(s.start_s is not None for s in sessions),
            "completed": sum(s.ok for s in sessions),
            "failed": sum(s.start_s is not None and not s.ok for s in sessions),
            "not_started": sum(s.start_s is None for s in sessions)}


def _per_role(calls: Sequence[CallRecord]) -> dict[str, Any]:
    roles: dict[str, list[CallRecord]] = defaultdict(list)
    for c in calls:
        roles[f"{c.role}/{c.kind}" if c.kind != "agent" else c.role].append(c)
    out = {}
    for name, cs in sorted(roles.items()):
        ok = [c for c in cs if c.ok]
        out[name] = {"calls": len(cs), "failed": len(cs) - len(ok),
                     "e2e_p95_s": percentile([c.e2e_s for c in ok], 95),
                     "ttft_p95_s": percentile([c.ttft_s for c in ok if c.ttft_s is not None], 95),
                     "mean_prompt_tokens": (statistics.fmean([c.prompt_tokens or 0 for c in ok])
                                            if ok else None),
                     "usage_hit_ratio": usage_hit_ratio(ok)}
    return out


def summarize(result: RunResult, block_size: int = DEFAULT_BLOCK_SIZE) -> dict[str, Any]:
    """Every number of a run as a JSON-able dict. ``block_size`` is the engines' KV block size
    (for the theoretical best hit ratio)."""
    calls = result.calls
    ok = [c for c in calls if c.ok]
    done_sessions = [s for s in result.sessions if s.ok and s.start_s is not None]
    window = (max(c.end_s for c in calls) - min(c.start_s for c in calls)) if calls else 0.0
    out_tokens = sum(c.completion_tokens or 0 for c in ok)
    prompt_tokens = sum(c.prompt_tokens or 0 for c in ok)
    errors = [c.error for c in calls if c.error is not None]
    retries = None
    if result.stats_before is not None and result.stats_after is not None:
        retries = (result.stats_after.stats.get("retries", 0)
                   - result.stats_before.stats.get("retries", 0))
    return {
        "url": result.url,
        "workload": result.workload,
        "stopped_by": result.stopped_by,
        "block_size": block_size,
        "sessions": _session_counts(result),
        "calls": {"sent": len(calls), "completed": len(ok), "failed": len(calls) - len(ok)},
        "errors": {"count": len(errors), "examples": sorted(set(errors))[:5]},
        "window_s": window,
        "latency_s": {
            "call_e2e": distribution([c.e2e_s for c in ok]),
            "ttft": distribution([c.ttft_s for c in ok if c.ttft_s is not None]),
            "session_e2e": distribution([s.end_s - s.start_s for s in done_sessions
                                         if s.end_s is not None and s.start_s is not None]),
            "session_queue": distribution([s.start_s - s.arrival_s for s in result.sessions
                                           if s.start_s is not None]),
        },
        "throughput": {
            "output_tok_s": _ratio(out_tokens, window),
            "total_tok_s": _ratio(out_tokens + prompt_tokens, window),
            "calls_per_s": _ratio(len(ok), window),
            "sessions_per_s": _ratio(len(done_sessions), window),
            "output_tokens": out_tokens,
            "prompt_tokens": prompt_tokens,
        },
        "prefix_cache": {
            "usage_hit_ratio": usage_hit_ratio(ok),
            "engine": engine_prefix_cache(result),
            "theoretical_best_hit_ratio": theoretical_best_hit_ratio(ok, block_size),
            "theoretical_best_same_role_hit_ratio": theoretical_best_hit_ratio(
                ok, block_size, same_role=True),
        },
        "kv_transfer": kv_transfers(result),
        "kv_cache_usage": kv_cache_usage(result),
        "retries": retries,
        "per_role": _per_role(calls),
    }
