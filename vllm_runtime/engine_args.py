"""Turns the app config into vLLM AsyncEngineArgs for a prefill (KV producer) or decode
(KV consumer) engine. Pure: builds plain dicts; the replica turns them into AsyncEngineArgs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from contract.config import EngineOptions

KvSide = Literal["producer", "consumer"]

# vLLM's NixlConnector with resumable decode requests (vllm_runtime/nixl_connector.py); a
# string, so building the engine args never imports vLLM.
CONNECTOR_MODULE = "vllm_runtime.nixl_connector"


@dataclass(frozen=True)
class EngineSpec:
    """Everything one engine needs, picklable, built by the app builder."""

    model: str
    side: KvSide
    options: EngineOptions
    prefix_caching: bool
    engine_id: str
    kv_load_failure_policy: Literal["fail", "recompute"] = "fail"
    # False only after deployments.kv_compat has checked the two checkpoints by hand.
    enforce_handshake_compat: bool = True
    lora: tuple[int, int] | None = None  # (max_lora_rank, max_loras) when serving adapters
    served_model_name: str | None = None


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """AVX-512 BF16 or AMX: without them vLLM's CPU bf16 path is ~5x slower than float32."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    return "avx512_bf16" in cpuinfo or "amx_bf16" in cpuinfo


def resolve_dtype(dtype: str, *, on_cpu: bool, fast_bf16: bool | None = None) -> str:
    """vLLM's "auto" downcasts float32 checkpoints to bf16; on a CPU without fast bf16 that
    made a 1000-token prefill 22 s instead of 4 s here, so "auto" means float32 there."""
    if dtype != "auto" or not on_cpu:
        return dtype
    fast = cpu_has_fast_bf16() if fast_bf16 is None else fast_bf16
    return "auto" if fast else "float32"


def engine_kwargs(spec: EngineSpec, *, on_cpu: bool) -> dict[str, Any]:
    """Keyword arguments for ``vllm.AsyncEngineArgs``."""
    opts = spec.options
    extra_config: dict[str, Any] = {
        "kv_lease_duration": opts.kv_lease_duration_s,
    }
    if not spec.enforce_handshake_compat:
        extra_config["enforce_handshake_compat"] = False
    kv_transfer = {
        "kv_connector": "NixlConnector",
        "kv_connector_module_path": CONNECTOR_MODULE,
        # kv_both on both sides, as vLLM's own P/D examples do; the request's
        # kv_transfer_params decide who produces and who consumes.
        "kv_role": "kv_both",
        "engine_id": spec.engine_id,
        "kv_buffer_device": "cpu" if on_cpu else "cuda",
        "kv_connector_extra_config": extra_config,
        "kv_load_failure_policy": spec.kv_load_failure_policy,
    }
    kwargs: dict[str, Any] = {
        "model": spec.model,
        "tokenizer": spec.model,
        "served_model_name": spec.served_model_name or spec.model,
        "dtype": resolve_dtype(opts.dtype, on_cpu=on_cpu),
        "max_model_len": opts.max_model_len,
        "block_size": opts.block_size,
        "max_num_seqs": opts.max_num_seqs,
        "enforce_eager": opts.enforce_eager,
        "enable_prefix_caching": spec.prefix_caching,
        "kv_transfer_config": kv_transfer,
        "disable_log_stats": False,
    }
    if opts.max_num_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = opts.max_num_batched_tokens
    # On CPU too: vLLM's legacy VLLM_CPU_KVCACHE_SPACE is whole GiB only, so a KV space under
    # 1 GiB (what the KV-capacity benchmark needs) must go through kv_cache_memory_bytes.
    kwargs["kv_cache_memory_bytes"] = int(opts.kv_cache_space_gib * (1 << 30))
    if spec.lora is not None:
        rank, count = spec.lora
        kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=count)
    kwargs.update(opts.extra)
    return kwargs
