"""Evaluation: base, Full-FT, naive sharing, PrefillShare (+LoRA), the sharing-ratio sweep,
and the multi-turn case. Runs in the CLI process (one process, no Ray: greedy decoding of a
few hundred problems does not need a cluster, and the box is shared).

Variants (decoder, sharing ratio r):
    base               base model alone                       r = 0 (r is moot: same weights)
    full_ft            conventionally fine-tuned decoder      r = 0 (its own prefill)
    naive              the same Full-FT decoder on base KV     r in ratios (headline r = 1)
    prefillshare       cache-conditioned decoder on base KV    r in ratios (headline r = 1)
    prefillshare_lora  cache-conditioned LoRA decoder          r = 1
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from training import scoring
from training.config import EvalConfig, TaskConfig
from training.data import encode_context, encode_example_context
from training.generation import greedy_generate
from training.models import load_base, load_decoder
from training.tasks import Example, apply_followup, get_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    task: str
    variant: str
    ratio: float
    correct: int
    n: int
    seconds: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval: sane at 0% and 100%, unlike the normal approximation."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def eval_device(choice: str) -> torch.device:
    from training.local_train import pick_device
    from training.train_job import enable_fast_matmul

    device = pick_device({"auto": "auto", "cpu": False, "cuda": True}[choice])
    enable_fast_matmul(device)
    return device


class Evaluator:
    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self.device = eval_device(cfg.device)
        self.base, self.tokenizer, self.base_path = load_base(cfg.base_model)
        self.base.to(self.device)
        self.decoders: dict[str, PreTrainedModel] = {"base": self.base}
        for key, ref in cfg.decoders.items():
            self.decoders[key] = load_decoder(ref, self.base_path).to(self.device)
        self.eos = [self.tokenizer.eos_token_id]
        self.samples: list[dict] = []  # completions, for reading what the numbers mean
        # One line per finished score: a run cut short still leaves what it measured.
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        self.partial = cfg.output_dir / "scores.partial.jsonl"
        self.partial.write_text("")

    def _record(self, score: Score) -> None:
        with self.partial.open("a") as f:
            f.write(json.dumps(asdict(score)) + "\n")

    def _generate(self, decoder: str, contexts: list[list[int]], ratio: float, shared: list[int] | None = None):
        model = self.decoders[decoder]
        ids = greedy_generate(
            self.base, model, contexts, self.cfg.max_new_tokens, ratio, shared, self.eos, self.cfg.batch_size,
            desc=f"eval {decoder} r={ratio:g}",
        )
        return [self.tokenizer.decode(x, skip_special_tokens=True) for x in ids]

    def _score(self, task_cfg: TaskConfig, variant: str, decoder: str, ratio: float, examples: list[Example]) -> Score:
        task = get_task(task_cfg.name)
        contexts = [encode_example_context(self.tokenizer, ex) for ex in examples]
        t0 = time.perf_counter()
        texts = self._generate(decoder, contexts, ratio)
        correct = sum(int(task.score(ex, text)) for ex, text in zip(examples, texts))
        score = Score(task_cfg.name, variant, ratio, correct, len(examples), round(time.perf_counter() - t0, 1))
        self.samples.extend(
            {"task": task_cfg.name, "variant": variant, "ratio": ratio, "uid": ex.uid, "completion": t}
            for ex, t in zip(examples[:5], texts[:5])
        )
        log.info("%s %s r=%.2f: %d/%d (%.1f s)", score.task, variant, ratio, correct, score.n, score.seconds)
        self._record(score)
        return score

    def score_task(self, task_cfg: TaskConfig) -> list[Score]:
        examples = get_task(task_cfg.name).load("test", task_cfg.eval_limit, task_cfg.seed)
        have = self.decoders
        plan: list[tuple[str, str, float]] = [("base", "base", 0.0)]
        if "full_ft" in have:
            plan.append(("full_ft", "full_ft", 0.0))
            plan += [("naive", "full_ft", r) for r in self.cfg.ratios if r > 0]
        if "prefillshare" in have:
            plan += [("prefillshare", "prefillshare", r) for r in self.cfg.ratios]
        if "prefillshare_lora" in have:
            plan.append(("prefillshare_lora", "prefillshare_lora", 1.0))
        scores = [self._score(task_cfg, variant, dec, r, examples) for variant, dec, r in plan]
        # naive at r = 0 IS full_ft (same decoder, no base KV): reuse instead of re-running.
        scores += [
            Score(s.task, "naive", 0.0, s.correct, s.n, s.seconds) for s in scores if s.variant == "full_ft"
        ]
        return scores

    def multi_turn(self, task_cfg: TaskConfig) -> list[Score]:
        """A context holding the decoder's own earlier answer, scored with that answer's KV
        from the base (PrefillShare: every context token is prefilled by the base) versus
        from the decoder itself (it keeps the KV it wrote while generating)."""
        examples = get_task("synthetic_arith", multi_turn_fraction=1.0).load("test", task_cfg.eval_limit, task_cfg.seed)
        scores = []
        for decoder in [d for d in ("prefillshare", "prefillshare_lora", "full_ft") if d in self.decoders]:
            first_ctx = [encode_context(self.tokenizer, ex.messages[:1]) for ex in examples]
            native = 0.0 if decoder == "full_ft" else 1.0  # how this decoder is served
            first = self._generate(decoder, first_ctx, native)
            second_msgs = [
                (ex.messages[0], {"role": "assistant", "content": text}, ex.messages[2])
                for ex, text in zip(examples, first)
            ]
            second_ctx = [encode_context(self.tokenizer, m) for m in second_msgs]
            own_from = [_common_prefix(a, b) for a, b in zip(first_ctx, second_ctx)]
            golds = [apply_followup(text, ex) for ex, text in zip(examples, first)]
            for source, ratio, shared in (("base", 1.0, None), ("own", 1.0, own_from)):
                t0 = time.perf_counter()
                texts = self._generate(decoder, second_ctx, ratio, shared)
                correct = sum(int(g is not None and scoring.score_number(t, g)) for t, g in zip(texts, golds))
                name = f"{decoder} turn2 earlier-output KV from {source}"
                scores.append(Score("synthetic_arith_2turn", name, ratio, correct, len(examples), round(time.perf_counter() - t0, 1)))
                self._record(scores[-1])
                log.info("%s: %d/%d", name, correct, len(examples))
        return scores

    def run(self) -> list[Score]:
        scores: list[Score] = []
        for task_cfg in self.cfg.tasks:
            scores += self.score_task(task_cfg)
            if self.cfg.multi_turn and task_cfg.name == "synthetic_arith":
                scores += self.multi_turn(task_cfg)
        return scores


def _common_prefix(a: list[int], b: list[int]) -> int:
    # The turn-1 context should be a token prefix of the turn-2 context; BPE merges at the
    # seam could shorten it, so measure instead of assuming.
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return min(n, len(b) - 1)


def run_evaluation(cfg: EvalConfig) -> Path:
    from training.report import write_report

    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    evaluator = Evaluator(cfg)
    scores = evaluator.run()
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(s) | {"accuracy": s.accuracy, "ci95": s.ci95} for s in scores]
    (out / "results.json").write_text(json.dumps({"config": cfg.model_dump(mode="json"), "scores": rows,
                                                  "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in evaluator.samples))
    write_report(scores, out)
    return out
