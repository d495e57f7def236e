"""The models and engine settings of the small apps the fault run and the soak start."""

from __future__ import annotations

from typing import Any


def base_decoder_engine(models: str, kv_cache_space_gib: float) -> tuple[str, str | None, dict[str, Any]]:
    """(base model, role decoder or None for the base itself, engine options) for
    `models` = "tiny" (random tiny Llamas, seconds to start) or "smollm2" (the packaged model)."""
    from bench.running_app import tiny_engine, tiny_models

    if models == "tiny":
        base, decoder = tiny_models()
        return base, decoder, tiny_engine(kv_cache_space_gib=kv_cache_space_gib)
    return "smollm2", None, {"max_model_len": 2048, "kv_cache_space_gib": kv_cache_space_gib}


def slim_bench_model() -> str:
    """The benchmarks' model (bench/issue6_sweep.sh, bench/issue16_sweep.sh): a SmolLM2-shaped
    but slimmer random Llama (16 layers, hidden 384, head_dim 64, SmolLM2's tokenizer): eight
    SmolLM2 engines need ~23 GiB here, eight of these ~19 (docs/benchmarks.md)."""
    from vllm_runtime.model_assets import cache_dir, tiny_llama_folder

    return str(tiny_llama_folder(cache_dir() / "bench-slim-16l", seed=5, num_layers=16,
                                 hidden_size=384, num_heads=6, num_kv_heads=2,
                                 max_position_embeddings=8192))
