"""Is a decoder checkpoint able to consume a prefill model's KV cache?

vLLM's NIXL handshake rejects engines whose model PATHS differ, and turning that check off
checks nothing else. So before the builder turns it off for a decoder, we compare what the KV
layout depends on: layer count, KV heads, head size and dtype (block size is checked by the
config schema). Pure: reads config.json files only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class KvIncompatible(ValueError):
    pass


@dataclass(frozen=True)
class KvLayout:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str

    @classmethod
    def of(cls, model_dir: str, engine_dtype: str = "auto") -> KvLayout:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)  # multimodal wrappers keep the LM config inside
        heads = int(cfg["num_attention_heads"])
        head_dim = cfg.get("head_dim") or int(cfg["hidden_size"]) // heads
        dtype = engine_dtype
        if dtype == "auto":
            dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
        return cls(
            num_layers=int(cfg["num_hidden_layers"]),
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            dtype=dtype.replace("torch.", ""),
        )


def check_kv_compatible(prefill_model: str, prefill_dtype: str,
                        decoder_model: str, decoder_dtype: str, *, where: str) -> None:
    """Raises KvIncompatible naming ``where`` (a config field path) and every mismatch."""
    p = KvLayout.of(prefill_model, prefill_dtype)
    d = KvLayout.of(decoder_model, decoder_dtype)
    diffs = [
        f"{field}: prefill {getattr(p, field)} vs decoder {getattr(d, field)}"
        for field in ("num_layers", "num_kv_heads", "head_dim", "dtype")
        if getattr(p, field) != getattr(d, field)
    ]
    if diffs:
        raise KvIncompatible(
            f"{where}: decoder {decoder_model} cannot read the KV cache of {prefill_model} "
            f"({'; '.join(diffs)})"
        )


_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "half": 2, "float": 4}


def kv_blocks_in(space_gib: float, block_size: int, layout: KvLayout) -> int:
    """How many KV blocks an engine holds in ``space_gib`` (K and V, every layer)."""
    per_block = (2 * layout.num_layers * layout.num_kv_heads * layout.head_dim * block_size
                 * _DTYPE_BYTES.get(layout.dtype, 2))
    return max(1, int(space_gib * (1 << 30)) // per_block)
