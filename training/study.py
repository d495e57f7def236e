"""`python -m training study`: a paired accuracy study of training methods (Full-FT,
PrefillShare, PrefillShare-LoRA, ...) with the same tuning budget for each.

1. trains every (arm, lr, seed) run of the config (the same worker job as `train`);
2. scores each decoder, as it is served, on the validation questions (held back from the
   train split) and on the test questions, one row per question (rows.jsonl);
3. writes report.md and summary.json (training/study_report.py): each arm's lr chosen on
   validation, test accuracy with intervals, the paired gap to the reference arm.

Nothing is lost on a crash: a run whose decoder was exported is not trained again (one cut
short resumes from its checkpoint), and a (run, split, ratio) already in rows.jsonl is not
scored again. Rerun the same command to go on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from training.config import DecoderRef, StudyConfig, TrainConfig
from training.data import encode_example_context
from training.evaluate import eval_device
from training.generation import greedy_generate
from training.models import load_base, load_decoder
from training.progress import progress_bar
from training.study_report import render_markdown, served_ratio, study_summary
from training.tasks import get_task, validation_examples
from vllm_runtime.decoder_identity import read_identity

log = logging.getLogger(__name__)


def planned_runs(cfg: StudyConfig) -> Iterator[tuple[str, float, int]]:
    for arm, method in cfg.arms.items():
        for lr in method.lrs:
            for seed in cfg.seeds:
                yield arm, lr, seed


def train_missing(cfg: StudyConfig, backend: str = "local") -> list[str]:
    """Trains the runs without an exported decoder; returns their names."""
    runs = [cfg.run_config(arm, lr, seed) for arm, lr, seed in planned_runs(cfg)]
    todo = [r for r in runs if read_identity(r.output_dir) is None]
    bar = progress_bar(len(runs), "study runs", "run", initial=len(runs) - len(todo))
    for run_cfg in todo:
        log.info("study: training %s (%d of %d left)", run_cfg.run_name, len(todo), len(runs))
        _train(run_cfg, backend)
        bar.update()
    bar.close()
    return [str(r.run_name) for r in todo]


def _train(run_cfg: TrainConfig, backend: str) -> None:
    if backend == "ray":
        from training.ray_train import run_training

        run_training(run_cfg)
        return
    from training.local_train import run_local_training

    run_local_training(run_cfg)


class RowStore:
    """rows.jsonl, appended one (run, split, ratio) at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists():
            self.rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        self.done = {(r["run"], r["split"], r["ratio"]) for r in self.rows}

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        self.rows += rows
        self.done |= {(r["run"], r["split"], r["ratio"]) for r in rows}


class StudyScorer:
    def __init__(self, cfg: StudyConfig) -> None:
        torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.device = eval_device(cfg.device)
        self.base, self.tokenizer, self.base_path = load_base(cfg.base_model)
        self.base.to(self.device)
        task = get_task(cfg.task.name)
        self.task = task
        self.questions = {
            "validation": validation_examples(task, cfg.task.validation_size, cfg.task.seed),
            "test": task.load("test", cfg.task.eval_limit, cfg.task.seed),
        }
        self.contexts = {split: [encode_example_context(self.tokenizer, ex) for ex in exs]
                         for split, exs in self.questions.items()}
        self.store = RowStore(cfg.output_dir / "rows.jsonl")

    def score_all(self) -> None:
        if ("base", "test", 0.0) not in self.store.done:
            self._score("base", {"arm": "base", "lr": 0.0, "seed": 0}, self.base, "test", 0.0)
        for arm, lr, seed in planned_runs(self.cfg):
            self._score_run(arm, lr, seed)

    def _score_run(self, arm: str, lr: float, seed: int) -> None:
        mode = self.cfg.arms[arm].mode
        ratio = served_ratio(mode)
        plan = [("validation", ratio), ("test", ratio)]
        if arm in self.cfg.also_at_r0 and ratio != 0.0:
            plan.append(("test", 0.0))
        run_cfg = self.cfg.run_config(arm, lr, seed)
        name = str(run_cfg.run_name)
        todo = [(split, r) for split, r in plan if (name, split, r) not in self.store.done]
        if not todo:
            return
        kind = "lora" if mode == "prefillshare_lora" else "full"
        decoder = load_decoder(DecoderRef(path=run_cfg.output_dir, kind=kind),
                               self.base_path).to(self.device)
        for split, r in todo:
            self._score(name, {"arm": arm, "lr": lr, "seed": seed}, decoder, split, r)
        del decoder

    def _score(self, name: str, who: dict[str, Any], decoder: Any, split: str,
               ratio: float) -> None:
        t0 = time.perf_counter()
        ids = greedy_generate(self.base, decoder, self.contexts[split], self.cfg.max_new_tokens,
                              ratio, None, [self.tokenizer.eos_token_id],
                              self.cfg.eval_batch_size, desc=f"{name} {split} r={ratio:g}")
        texts = [self.tokenizer.decode(x, skip_special_tokens=True) for x in ids]
        rows = [{"run": name, **who, "split": split, "ratio": ratio, "uid": ex.uid,
                 "correct": int(self.task.score(ex, text))}
                for ex, text in zip(self.questions[split], texts)]
        self.store.add(rows)
        log.info("study: %s %s r=%g: %d/%d (%.0f s)", name, split, ratio,
                 sum(r["correct"] for r in rows), len(rows), time.perf_counter() - t0)


def write_report(cfg: StudyConfig) -> Path:
    rows = RowStore(cfg.output_dir / "rows.jsonl").rows
    arms = {arm: (m.mode, list(m.lrs)) for arm, m in cfg.arms.items()}
    summary = study_summary(rows, arms, cfg.reference, cfg.seeds)
    out = cfg.output_dir
    (out / "summary.json").write_text(json.dumps(
        {"config": cfg.model_dump(mode="json"), **summary}, indent=2, default=str))
    (out / "report.md").write_text(render_markdown(summary, cfg.reference))
    return out / "report.md"


def run_study(cfg: StudyConfig, backend: str = "local", report_only: bool = False) -> Path:
    if not report_only:
        train_missing(cfg, backend)
        StudyScorer(cfg).score_all()
    return write_report(cfg)
