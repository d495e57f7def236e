"""One worker's whole job, backend-agnostic: load base + decoder, train, export (chief only).

Ray Train's worker (ray_train.worker_main) and the in-process local backend (local_train.py)
both call train_and_export; they differ only in the WorkerEnv (rank, device, all-reduce) and
the CheckpointStore they pass.
"""

from __future__ import annotations

import logging
import time

import torch

from training.config import TrainConfig
from training.data import TokenizedExample, tokenize_examples
from training.loop import CheckpointStore, WorkerEnv, total_steps, train_decoder
from training.models import export_decoder, load_base, make_decoder
from training.tasks import get_task, training_examples
from vllm_runtime.decoder_identity import model_identity

log = logging.getLogger(__name__)


def load_training_data(cfg: TrainConfig, tokenizer) -> list[TokenizedExample]:
    task = get_task(cfg.task.name, cfg.task.multi_turn_fraction)
    examples = training_examples(task, cfg.task.train_limit, cfg.task.seed, cfg.task.validation_size)
    return tokenize_examples(tokenizer, examples, cfg.max_length)


def enable_fast_matmul(device: torch.device) -> None:
    # TF32 matmuls on CUDA (Ampere+): ~8x the float32 rate; weights and optimizer stay float32.
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def train_and_export(cfg: TrainConfig, env: WorkerEnv, store: CheckpointStore) -> list[float]:
    """Trains one decoder (resuming from the store's latest checkpoint); the chief exports it."""
    torch.set_num_threads(cfg.threads_per_worker)
    torch.manual_seed(cfg.seed)
    enable_fast_matmul(env.device)
    base, tokenizer, base_path = load_base(cfg.base_model)
    decoder = make_decoder(base_path, cfg.mode, cfg.lora, cfg.seed).to(env.device)
    # The conventional baseline never reads base KV: free the memory.
    base = base.to(env.device) if cfg.boundary_ratio > 0 else None
    data = load_training_data(cfg, tokenizer)
    t0 = time.perf_counter()
    losses = train_decoder(cfg, base, decoder, data, store, env)
    if env.rank == 0:
        record = {
            "format": 1,
            "kind": "lora" if cfg.mode == "prefillshare_lora" else "full",
            "mode": cfg.mode,
            "sharing_ratio": cfg.boundary_ratio,
            "base": model_identity(base_path),
            "steps": total_steps(cfg, len(data)),
            "examples": len(data),
            "losses": [round(x, 5) for x in losses],
            "seconds_last_run": round(time.perf_counter() - t0, 1),
            "device": str(env.device),
            "train_config": cfg.model_dump(mode="json"),
        }
        export_decoder(decoder.cpu(), tokenizer, cfg.output_dir, record, cfg.save_dtype)
    return losses
