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
