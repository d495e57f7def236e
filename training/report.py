"""Evaluation results as a markdown table and the sharing-ratio sweep plot (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.evaluate import Score

HEADLINE = [("base", 0.0), ("full_ft", 0.0), ("naive", 1.0), ("prefillshare", 1.0), ("prefillshare_lora", 1.0)]


def _cell(score: Score) -> str:
    lo, hi = score.ci95
    return f"{100 * score.accuracy:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] (n={score.n})"


def markdown_table(scores: Sequence[Score]) -> str:
    """Headline table (accuracy % with 95% Wilson CI), then the sweep, then multi-turn rows."""
    by_key = {(s.task, s.variant, s.ratio): s for s in scores}
    tasks = sorted({s.task for s in scores if s.variant in dict(HEADLINE)})
    lines = ["| task | " + " | ".join(v for v, _ in HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
    for task in tasks:
        cells = [_cell(by_key[(task, v, r)]) if (task, v, r) in by_key else "-" for v, r in HEADLINE]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    ratios = sorted({s.ratio for s in scores if s.variant in ("naive", "prefillshare")})
    if ratios:
        lines += ["", "Sharing-ratio sweep (accuracy %, share of context positions on base KV):", ""]
        lines.append("| task | variant | " + " | ".join(f"r={r:g}" for r in ratios) + " |")
        lines.append("|---" * (len(ratios) + 2) + "|")
        for task in tasks:
            for variant in ("naive", "prefillshare"):
                row = [by_key.get((task, variant, r)) for r in ratios]
                if any(row):
                    cells = [f"{100 * s.accuracy:.1f}" if s else "-" for s in row]
                    lines.append(f"| {task} | {variant} | " + " | ".join(cells) + " |")
    multi = [s for s in scores if "turn2" in s.variant]
    if multi:
        lines += ["", "| multi-turn (turn-2 accuracy) | accuracy % [95% CI] |", "|---|---|"]
        lines += [f"| {s.variant} | {_cell(s)} |" for s in multi]
    return "\n".join(lines) + "\n"


def sweep_plot(scores: Sequence[Score], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    tasks = sorted({s.task for s in scores if s.variant in ("naive", "prefillshare")})
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for variant, style in (("naive", "o--"), ("prefillshare", "s-")):
            pts = sorted((s.ratio, s) for s in scores if s.task == task and s.variant == variant)
            if not pts:
                continue
            xs = [r for r, _ in pts]
            ys = [100 * s.accuracy for _, s in pts]
            lo = [100 * (s.accuracy - s.ci95[0]) for _, s in pts]
            hi = [100 * (s.ci95[1] - s.accuracy) for _, s in pts]
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt=style, capsize=3, label=variant)
        _label_sweep_axis(ax, task, "accuracy %")
    return _save(fig, plt, path)


def _label_sweep_axis(ax, task: str, ylabel: str) -> None:
    """One panel of a sharing-ratio sweep plot: r on x, the five swept ratios as ticks."""
    ax.set_title(task)
    ax.set_xlabel("sharing ratio r (context on base KV)")
    ax.set_ylabel(ylabel)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1])
    ax.grid(alpha=0.3)
    ax.legend()


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def nll_sweep_plot(nll_per_token: dict[str, dict[str, float]], path: Path) -> Path | None:
    """Held-out NLL per response token vs r, naive vs PrefillShare, one panel per task
    ({task: {"variant@r": nats}} as heldout_nll returns it); Full-FT's own prefill is naive@0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(t for t, rows in nll_per_token.items() if any(k.startswith(("naive@", "prefillshare@")) for k in rows))
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = nll_per_token[task]
        for variant, style in (("naive", "o--"), ("prefillshare", "s-")):
            pts = sorted((float(k.split("@")[1]), v) for k, v in rows.items() if k.split("@")[0] == variant)
            if pts:
                ax.plot([r for r, _ in pts], [v for _, v in pts], style, label=variant)
        _label_sweep_axis(ax, task, "held-out NLL, nats / response token")
    return _save(fig, plt, path)


def write_report(scores: Sequence[Score], out_dir: Path) -> None:
    (out_dir / "table.md").write_text(markdown_table(scores))
    sweep_plot(scores, out_dir / "sweep.png")
