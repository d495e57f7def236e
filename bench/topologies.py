"""The systems a benchmark compares on the same box.

- baseline: the paper's multi-model disaggregated serving: every role is its own model with
  its own prefill pool and its own decode pool; no KV is shared across roles.
- prefillshare: one shared base-model prefill pool (as many replicas as the baseline has
  prefill engines, routed by session + prefix locality) and one decode pool per role.
- prefillshare-lora: one shared prefill pool and ONE decode pool serving every role as a LoRA
  adapter over the base (what the default app ships).
- vllm-lora: not a PrefillShare app: vLLM's own server with the adapters (bench/vllm_server.py).
baseline and prefillshare get the same number of engines, each with the same engine options;
the LoRA systems have fewer engines, so the report states every system's memory. Pure: app
args only.
"""

from __future__ import annotations

from typing import Any, Literal

Topology = Literal["baseline", "prefillshare", "prefillshare-lora", "vllm-lora"]
TOPOLOGIES: tuple[str, ...] = ("baseline", "prefillshare", "prefillshare-lora", "vllm-lora")


def app_args(topology: Topology, roles: list[str], model: str, engine: dict[str, Any], *,
             decode_kv_mode: str = "exact", prefill_policy: str = "prefix_locality",
             decode_engine: dict[str, Any] | None = None,
             adapters: dict[str, str] | None = None, lora_rank: int = 8) -> dict[str, Any]:
    """``engine``: every prefill engine's options; ``decode_engine``: every decode engine's
    (default: the same). Every topology gets the same two, so a KV-capacity setting applies
    to the same engines on each side. ``adapters`` (role -> folder): the LoRA systems'."""
    decode = {"engine": decode_engine if decode_engine is not None else engine}
    if topology in ("prefillshare-lora", "vllm-lora"):
        if adapters is None or set(adapters) != set(roles):
            raise ValueError(f"{topology} needs one adapter per role")
    if topology == "vllm-lora":
        # One engine does everything, with the KV space of prefillshare-lora's two engines
        # (one prefill, one decode): the same KV budget for the two LoRA systems.
        kv = engine.get("kv_cache_space_gib", 1.0) + decode["engine"].get(
            "kv_cache_space_gib", 1.0)
        return {"model": model, "adapters": dict(adapters or {}),
                "engine": {**engine, "kv_cache_space_gib": kv, "max_lora_rank": lora_rank}}
    if topology == "prefillshare-lora":
        return {
            "base_model": model,
            "prefill_pools": {"shared": {"engine": engine}},
            "lora_pool": {**decode, "max_lora_rank": lora_rank, "max_loras": len(roles)},
            "roles": [{"name": r, "lora_adapter": (adapters or {})[r]} for r in roles],
            "decode_kv_mode": decode_kv_mode,
            "routing": {"prefill_policy": prefill_policy},
        }
    if topology == "baseline":
        return {
            "base_model": model,
            # Each role prefills with its own checkpoint (here: a copy of the same weights;
            # what matters for serving is that the caches are separate).
            "prefill_pools": {r: {"model": model, "engine": engine} for r in roles},
            "roles": [{"name": r, "decoder": model, "prefill_pool": r, "decode_pool": decode}
                      for r in roles],
            "routing": {"prefill_policy": "session_sticky"},
        }
    return {
        "base_model": model,
        "prefill_pools": {"shared": {"replicas": len(roles), "engine": engine}},
        "roles": [{"name": r, "decode_pool": decode} for r in roles],
        "decode_kv_mode": decode_kv_mode,
        "routing": {"prefill_policy": prefill_policy},
    }
