"""Held-out response NLL across the sharing-ratio sweep: a low-variance companion to accuracy.

Accuracy on a few dozen problems moves in steps of several points; the teacher-forced NLL per
response token, on exactly the boundary of kv_boundary.py, shows how much a decoder suffers
from reading base KV long before accuracy can. Runs in the CLI process.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from training.config import EvalConfig
from training.data import tokenize_examples
from training.models import load_base, load_decoder
from training.objective import per_sample_nll
from training.tasks import get_task

log = logging.getLogger(__name__)

# variant -> decoder key; naive and prefillshare are swept over r, the rest use their r.
_PLAN = {"base": "base", "naive": "full_ft", "prefillshare": "prefillshare", "prefillshare_lora": "prefillshare_lora"}


@torch.no_grad()
def heldout_nll(cfg: EvalConfig, limit: int = 96) -> dict[str, dict[str, float]]:
    """{task: {"variant@r": mean NLL per response token}} over `limit` held-out examples."""
    from training.evaluate import eval_device

    torch.set_num_threads(cfg.threads)
    device = eval_device(cfg.device)
    base, tokenizer, base_path = load_base(cfg.base_model)
    base.to(device)
    models = {"base": base} | {k: load_decoder(ref, base_path).to(device) for k, ref in cfg.decoders.items()}
    out: dict[str, dict[str, float]] = {}
    for task_cfg in cfg.tasks:
        task = get_task(task_cfg.name)
        if not task.trainable:
            continue
        data = tokenize_examples(tokenizer, task.load("test", limit, task_cfg.seed), max_length=2048)
        rows: dict[str, float] = {}
        for variant, key in _PLAN.items():
            if key not in models:
                continue
            ratios = cfg.ratios if variant in ("naive", "prefillshare") else [1.0 if "prefillshare" in variant else 0.0]
            for r in ratios:
                total, tokens = 0.0, 0
                for i in range(0, len(data), cfg.batch_size):
                    chunk = data[i : i + cfg.batch_size]
                    nll, count = per_sample_nll(base, models[key], [d.context for d in chunk], [d.response for d in chunk], r)
                    total, tokens = total + float(nll.sum()), tokens + int(count.sum())
                rows[f"{variant}@{r:g}"] = total / tokens
                log.info("%s %s r=%g: %.4f nats/token", task_cfg.name, variant, r, rows[f"{variant}@{r:g}"])
        out[task_cfg.name] = rows
    return out


def write_nll(cfg: EvalConfig, limit: int = 96) -> Path:
    result = heldout_nll(cfg, limit)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.output_dir / "heldout_nll.json"
    path.write_text(json.dumps({"limit": limit, "nll_per_token": result}, indent=2))
    from training.report import nll_sweep_plot

    nll_sweep_plot(result, cfg.output_dir / "nll_sweep.png")
    return path
