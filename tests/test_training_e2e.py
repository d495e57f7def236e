"""End to end on a tiny model: Ray Train fit (2 data-parallel workers) -> export -> eval CLI.

One TorchTrainer.fit() costs ~35 s of fixed Ray overhead here: this is the only one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from training.__main__ import main
from training.config import TaskConfig, TrainConfig
from vllm_runtime.decoder_identity import IDENTITY_FILE, model_identity
from vllm_runtime.model_assets import tiny_llama_folder

torch.set_num_threads(1)  # the box is shared


@pytest.fixture()
def local_ray():
    import ray

    from vllm_runtime.ray_local import keep_ray_on_loopback

    # Short path: Ray's unix sockets live under the temp dir (~107-char limit).
    temp = tempfile.mkdtemp(prefix="psr", dir="/tmp")
    repo = str(Path(__file__).resolve().parents[1])
    keep_ray_on_loopback()
    ray.init(address="local", include_dashboard=False, _temp_dir=temp, num_cpus=2,
             _node_ip_address="127.0.0.1", runtime_env={"env_vars": {"PYTHONPATH": repo}})
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_train_on_ray_then_eval(tmp_path, local_ray):
    from training.ray_train import run_training

    base = tiny_llama_folder(tmp_path / "tiny", seed=5)
    cfg = TrainConfig(
        base_model=str(base), task=TaskConfig(name="synthetic_arith", train_limit=16),
        mode="prefillshare", output_dir=tmp_path / "dec", storage_dir=tmp_path / "ck",
        steps=2, batch_size=4, micro_batch_size=2, lr=1e-3, num_workers=2, checkpoint_every=1, max_length=256,
    )
    out = run_training(cfg)

    record = json.loads((out / IDENTITY_FILE).read_text())
    assert record["base"] == model_identity(base)
    assert record["mode"] == "prefillshare" and record["sharing_ratio"] == 1.0 and len(record["losses"]) == 2
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    assert (out / "tokenizer.json").exists()  # vLLM loads the folder as is

    eval_cfg = {
        "base_model": str(base),
        "tasks": [{"name": "synthetic_arith", "eval_limit": 3}],
        "decoders": {"full_ft": {"path": str(out)}, "prefillshare": {"path": str(out)}},
        "ratios": [0.0, 1.0], "max_new_tokens": 4, "batch_size": 3, "output_dir": str(tmp_path / "eval"),
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(eval_cfg))
    assert main(["eval", "--config", str(tmp_path / "eval.yaml")]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["scores"]
    variants = {(r["variant"], r["ratio"]) for r in results}
    assert {("base", 0.0), ("full_ft", 0.0), ("naive", 1.0), ("prefillshare", 1.0)} <= variants
    assert any("turn2" in v for v, _ in variants)
    assert (tmp_path / "eval" / "table.md").exists() and (tmp_path / "eval" / "sweep.png").exists()
