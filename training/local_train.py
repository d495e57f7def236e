"""The local backend: the same worker job as Ray Train's, run in this process (one worker).

For machines without Ray (a lent GPU box) and quick single-process runs. Checkpoints are torch
files under storage_dir/run_name; rerunning the same command resumes from the latest one, as
the Ray path does. Ray stays the default backend (`python -m training train`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from training.config import TrainConfig
from training.loop import LocalCheckpointStore, WorkerEnv
from training.train_job import train_and_export

log = logging.getLogger(__name__)


def pick_device(use_gpu: bool | str) -> torch.device:
    if use_gpu is True and not torch.cuda.is_available():
        raise RuntimeError("use_gpu: true but torch sees no CUDA device")
    if use_gpu is not False and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def default_run_name(cfg: TrainConfig) -> str:
    return cfg.run_name or f"{cfg.output_dir.name}-{cfg.mode}"


def run_local_training(cfg: TrainConfig) -> Path:
    """Trains in-process on one device (CUDA if present, unless use_gpu is false); returns output_dir."""
    if cfg.num_workers != 1:
        raise ValueError("the local backend runs one worker: set num_workers: 1 or use Ray")
    cfg = cfg.model_copy(update={"output_dir": cfg.output_dir.resolve(), "storage_dir": cfg.storage_dir.resolve()})
    device = pick_device(cfg.use_gpu)
    log.info("local backend on %s", device)
    store = LocalCheckpointStore(cfg.storage_dir / default_run_name(cfg), keep=cfg.keep_checkpoints)
    train_and_export(cfg, WorkerEnv(device=device), store)
    return cfg.output_dir
