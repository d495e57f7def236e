"""The accuracy study's analysis: pure functions over its per-question rows.

A row is one question scored for one decoder: {run, arm, lr, seed, split, ratio, uid,
correct}. The lr of each arm is chosen on the validation questions (mean over seeds), never
on the test questions; arms are then compared on the same test questions, paired per question
and seed, with a bootstrap interval over questions for the gap.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from training.evaluate import wilson_interval

Row = dict[str, Any]


def served_ratio(mode: str) -> float:
    """How an arm's decoder is served: Full-FT on its own prefill, the others on base KV."""
    return 0.0 if mode == "full_ft" else 1.0


def _select(rows: Iterable[Row], **match: Any) -> list[Row]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def mean_accuracy(rows: Sequence[Row]) -> float:
    return sum(r["correct"] for r in rows) / len(rows) if rows else float("nan")


def choose_lr(rows: Sequence[Row], arm: str, lrs: Sequence[float], ratio: float) -> float:
    """The lr with the best validation accuracy over all seeds; a tie goes to the smaller lr."""
    scored = [(mean_accuracy(_select(rows, arm=arm, lr=lr, split="validation", ratio=ratio)), lr)
              for lr in lrs]
    scored = [(acc, lr) for acc, lr in scored if acc == acc]  # NaN: not scored yet
    if not scored:
        raise ValueError(f"arm {arm!r} has no validation rows")
    best = max(acc for acc, _ in scored)
    return min(lr for acc, lr in scored if acc == best)


def correct_of(rows: Sequence[Row]) -> tuple[int, int]:
    """(questions right, questions scored)."""
    return sum(int(r["correct"]) for r in rows), len(rows)


@dataclass(frozen=True)
class PairedGap:
    """arm minus reference on the same test questions, averaged over seeds."""

    gap: float
    ci95: tuple[float, float]
    questions: int
    only_arm: int  # (question, seed) pairs the arm got right and the reference wrong
    only_reference: int


def paired_gap(arm_rows: Sequence[Row], ref_rows: Sequence[Row], resamples: int = 5000,
               rng_seed: int = 0) -> PairedGap:
    """Rows of one arm and of the reference (each: one lr and ratio, one or more seeds)."""
    arm, ref = _by_question(arm_rows), _by_question(ref_rows)
    if set(arm) != set(ref):
        raise ValueError("the arm and the reference were scored on different questions")
    uids = sorted(arm)
    diffs = [_mean(arm[u].values()) - _mean(ref[u].values()) for u in uids]
    only_arm = sum(1 for u in uids for s in arm[u] if s in ref[u] and arm[u][s] > ref[u][s])
    only_ref = sum(1 for u in uids for s in arm[u] if s in ref[u] and arm[u][s] < ref[u][s])
    rng = random.Random(rng_seed)
    means = sorted(_mean(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    low, high = means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
    return PairedGap(_mean(diffs), (low, high), len(uids), only_arm, only_ref)


def _by_question(rows: Sequence[Row]) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = defaultdict(dict)
    for r in rows:
        out[r["uid"]][r["seed"]] = int(r["correct"])
    return out


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _interval(ci: tuple[float, float]) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def study_summary(rows: Sequence[Row], arms: dict[str, tuple[str, list[float]]],
                  reference: str, seeds: Sequence[int]) -> dict[str, Any]:
    """arms: name -> (mode, lr grid). What report.md shows, as data (summary.json)."""
    chosen = {arm: choose_lr(rows, arm, lrs, served_ratio(mode))
              for arm, (mode, lrs) in arms.items()}
    test = {arm: _select(rows, arm=arm, lr=chosen[arm], split="test",
                         ratio=served_ratio(arms[arm][0])) for arm in arms}
    summary: dict[str, Any] = {"chosen_lr": chosen, "arms": {}, "grid": [], "r0": {}}
    for arm, arm_rows in test.items():
        right, n = correct_of(arm_rows)
        per_seed = {s: mean_accuracy(_select(arm_rows, seed=s)) for s in seeds}
        entry = {"test_accuracy": mean_accuracy(arm_rows), "ci95": wilson_interval(right, n),
                 "n": n, "per_seed": per_seed}
        if arm != reference:
            gap = paired_gap(arm_rows, test[reference])
            entry["gap_vs_reference"] = gap.__dict__
        summary["arms"][arm] = entry
    for arm, (mode, lrs) in arms.items():
        ratio = served_ratio(mode)
        for lr in lrs:
            summary["grid"].append({
                "arm": arm, "lr": lr,
                "validation": mean_accuracy(_select(rows, arm=arm, lr=lr, split="validation",
                                                    ratio=ratio)),
                "test": mean_accuracy(_select(rows, arm=arm, lr=lr, split="test", ratio=ratio))})
        own = _select(rows, arm=arm, lr=chosen[arm], split="test", ratio=0.0)
        if ratio != 0.0 and own:
            summary["r0"][arm] = {"own_prefill": mean_accuracy(own),
                                  "base_kv": mean_accuracy(test[arm])}
    base = _select(rows, arm="base", split="test")
    if base:
        summary["base_test_accuracy"] = mean_accuracy(base)
    return summary


def render_markdown(summary: dict[str, Any], reference: str) -> str:
    lines = ["| arm | chosen lr | test accuracy % (all seeds) | 95% CI | per seed | gap vs "
             f"{reference} (points) | 95% CI | only arm right | only {reference} right |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm, e in summary["arms"].items():
        seeds = ", ".join(_pct(v) for v in e["per_seed"].values())
        gap = e.get("gap_vs_reference")
        gap_cells = (f"{100 * gap['gap']:+.1f} | {_interval(gap['ci95'])} | {gap['only_arm']} | "
                     f"{gap['only_reference']}") if gap else "- | - | - | -"
        lines.append(f"| {arm} | {summary['chosen_lr'][arm]:g} | {_pct(e['test_accuracy'])} | "
                     f"{_interval(e['ci95'])} | {seeds} | {gap_cells} |")
    lines += ["", "| arm | lr | validation accuracy % | test accuracy % |", "|---|---|---|---|"]
    lines += [f"| {g['arm']} | {g['lr']:g} | {_pct(g['validation'])} | {_pct(g['test'])} |"
              for g in summary["grid"]]
    if summary["r0"]:
        lines += ["", "| arm | on base KV (r = 1) % | on its own prefill (r = 0) % |",
                  "|---|---|---|"]
        lines += [f"| {arm} | {_pct(e['base_kv'])} | {_pct(e['own_prefill'])} |"
                  for arm, e in summary["r0"].items()]
    if "base_test_accuracy" in summary:
        lines += ["", f"The base model alone: {_pct(summary['base_test_accuracy'])}% on the "
                  "test questions."]
    return "\n".join(lines) + "\n"
