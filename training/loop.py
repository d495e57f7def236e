"""The training loop of one worker: plain torch, no Ray (ray_train.py adapts it).

    for step in steps:              # resumes at the checkpoint's step
        batch = global_batch(step)  # a pure function of (seed, step)
        for micro in my share:      # data parallel: strided slice per worker
            loss = sum NLL / tokens in the GLOBAL batch; backward
        all-reduce(SUM) grads; AdamW step; LR schedule step
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel

from training.config import TrainConfig
from training.data import TokenizedExample, global_batch, worker_micro_batches
from training.models import load_trainable_state, trainable_state
from training.objective import per_sample_nll
from training.progress import progress_bar

log = logging.getLogger(__name__)


class CheckpointStore(Protocol):
    def latest(self) -> dict[str, Any] | None: ...

    def save(self, step: int, state: dict[str, Any] | None, metrics: dict[str, float]) -> None:
        """Every worker calls it (a barrier under Ray); only the chief passes a state."""


class LocalCheckpointStore:
    """Checkpoints as torch files in a folder: tests and single-process runs."""

    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root, self.keep = Path(root), keep
        self.root.mkdir(parents=True, exist_ok=True)

    def latest(self) -> dict[str, Any] | None:
        found = sorted(self.root.glob("step-*.pt"))
        return torch.load(found[-1], weights_only=False) if found else None

    def save(self, step: int, state: dict[str, Any] | None, metrics: dict[str, float]) -> None:
        if state is None:
            return
        tmp = self.root / f"step-{step:07d}.pt.partial"
        torch.save(state, tmp)
        tmp.rename(self.root / f"step-{step:07d}.pt")  # a crash mid-save leaves the old one
        for old in sorted(self.root.glob("step-*.pt"))[: -self.keep]:
            old.unlink()


@dataclass(frozen=True)
class WorkerEnv:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    allreduce: Callable[[list[torch.Tensor]], None] | None = None  # sums across workers


def total_steps(cfg: TrainConfig, num_examples: int) -> int:
    return cfg.steps or max(1, math.ceil(cfg.epochs * num_examples / cfg.batch_size))


def lr_multiplier(step: int, total: int, warmup_ratio: float, schedule: str) -> float:
    """Linear warmup over warmup_ratio of the steps, then linear or cosine decay to 0."""
    warmup = max(1, round(warmup_ratio * total)) if warmup_ratio > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


def build_optimizer(decoder: PreTrainedModel, cfg: TrainConfig, total: int) -> tuple[torch.optim.Optimizer, Any]:
    params = [p for p in decoder.parameters() if p.requires_grad]
    # nanoGPT's split: decay matrices, not norms/biases (decaying RMSNorm gains toward 0 hurts).
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, total, cfg.warmup_ratio, cfg.schedule)
    )
    return optimizer, scheduler


def train_decoder(
    cfg: TrainConfig,
    base: PreTrainedModel | None,
    decoder: PreTrainedModel,
    data: list[TokenizedExample],
    store: CheckpointStore,
    env: WorkerEnv = WorkerEnv(),
    stop_after: int | None = None,
) -> list[float]:
    """Trains until total_steps (or stop_after, to simulate a crash); returns every step's loss
    (those before a resume come from the checkpoint)."""
    total = total_steps(cfg, len(data))
    optimizer, scheduler = build_optimizer(decoder, cfg, total)
    start = 0
    losses: list[float] = []
    state = store.latest()
    if state is not None:
        load_trainable_state(decoder, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
        losses = list(state.get("losses", []))
        log.info("resumed from step %d of %d", start, total)
    ratio = cfg.boundary_ratio
    chief = env.rank == 0
    t0 = time.perf_counter()
    decoder.train()
    bar = progress_bar(total, "train", "step", initial=start, enabled=None if chief else False)
    for step in range(start, total):
        indices = global_batch(len(data), cfg.batch_size, step, cfg.seed)
        global_tokens = sum(len(data[i].response) for i in indices)
        step_loss = torch.zeros((), device=env.device)
        for micro in worker_micro_batches(indices, env.rank, env.world, cfg.micro_batch_size):
            contexts = [data[i].context for i in micro]
            responses = [data[i].response for i in micro]
            nll, _ = per_sample_nll(base, decoder, contexts, responses, ratio)  # (b,)
            loss = nll.sum() / global_tokens  # this micro-batch's share of the global mean
            loss.backward()
            step_loss += loss.detach()
        grads = [p.grad for p in decoder.parameters() if p.grad is not None]
        if env.allreduce is not None:
            env.allreduce(grads + [step_loss])
        optimizer.step()  # no clipping (paper)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(step_loss))
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
        if chief and (done % cfg.log_every == 0 or done == total or done == start + 1):
            per_step = (time.perf_counter() - t0) / (done - start)
            log.info(
                "step %d/%d loss %.4f lr %.2e %.2f s/step eta %.0f s",
                done, total, losses[-1], scheduler.get_last_lr()[0], per_step, per_step * (total - done),
            )
        if done % cfg.checkpoint_every == 0 or done == total:
            snapshot = (
                {
                    "step": done,
                    "trainable": trainable_state(decoder),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "config": cfg.model_dump(mode="json"),
                    "losses": losses,
                }
                if chief
                else None
            )
            store.save(done, snapshot, {"step": done, "loss": losses[-1]})
        if stop_after is not None and done >= stop_after:
            break
    bar.close()
    return losses
