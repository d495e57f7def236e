"""Ray Train glue: TorchTrainer runs training/loop.py in N data-parallel workers.

The driver (CLI process) builds the trainer; each Ray Train worker process loads the frozen
base and its decoder copy, trains its strided share of each global batch, and all-reduces
gradients with torch.distributed (gloo on CPU, nccl on GPU). Checkpoints go through
ray.train.report; re-running with the same run name and storage dir resumes from the latest.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from training.config import TrainConfig
from training.local_train import default_run_name
from training.loop import WorkerEnv
from training.train_job import load_training_data, train_and_export  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)
_STATE_FILE = "state.pt"


class RayCheckpointStore:
    """CheckpointStore over ray.train: every report is a barrier, so all workers call save."""

    def latest(self) -> dict[str, Any] | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / _STATE_FILE, weights_only=False)

    def save(self, step: int, state: dict[str, Any] | None, metrics: dict[str, float]) -> None:
        import ray.train

        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / _STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _allreduce_sum(tensors: list[torch.Tensor]) -> None:
    import torch.distributed as dist

    # One flat buffer: one collective per step instead of one per parameter.
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def worker_main(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker process."""
    import ray.train
    import ray.train.torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = TrainConfig.model_validate(config)
    context = ray.train.get_context()
    env = WorkerEnv(
        rank=context.get_world_rank(),
        world=context.get_world_size(),
        device=ray.train.torch.get_device(),
        allreduce=_allreduce_sum if context.get_world_size() > 1 else None,
    )
    train_and_export(cfg, env, RayCheckpointStore())


def run_training(cfg: TrainConfig, ray_temp_dir: str | None = None, max_failures: int = 0) -> Path:
    """Trains with TorchTrainer on the local (or already connected) Ray cluster; returns output_dir."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = cfg.model_copy(update={"output_dir": cfg.output_dir.resolve(), "storage_dir": cfg.storage_dir.resolve()})
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS", "local")
        local = {}
        if address == "local":  # a Ray of our own: loopback only (vllm_runtime/ray_local.py)
            from vllm_runtime.ray_local import keep_ray_on_loopback

            keep_ray_on_loopback()
            local = {"_node_ip_address": "127.0.0.1"}
        ray.init(
            address=address,
            include_dashboard=False,
            _temp_dir=ray_temp_dir,
            # The workers' own runtime env must find this package.
            runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}},
            **local,
        )
    use_gpu = cfg.use_gpu if isinstance(cfg.use_gpu, bool) else ray.cluster_resources().get("GPU", 0) > 0
    trainer = TorchTrainer(
        worker_main,
        train_loop_config=cfg.model_dump(mode="json"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1}
        ),
        run_config=RunConfig(
            name=default_run_name(cfg),
            storage_path=str(cfg.storage_dir),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return cfg.output_dir
