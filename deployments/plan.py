"""From a validated AppConfig to the deployments to create: which engines, with which specs,
and where each role's requests go. Pure (no Ray): the app builder turns a plan into Serve
deployments, and tests inspect plans directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from contract.config import AppConfig, PoolOptions, RoleConfig
from contract.roles import (
    LORA_POOL,
    ServedRole,
    decode_deployment_name,
    prefill_deployment_name,
    served_role,
)
from deployments.kv_compat import check_kv_compatible
from vllm_runtime.admission import AdmissionLimits
from vllm_runtime.decoder_identity import base_mismatch
from vllm_runtime.engine_args import EngineSpec
from vllm_runtime.lora_adapters import check_adapter
from vllm_runtime.model_assets import resolve_model


@dataclass(frozen=True)
class EnginePool:
    """One Serve deployment of identical engines."""

    name: str  # the Serve deployment name
    pool: str  # the pool name inside the app (a prefill pool, a role, or "lora")
    spec: EngineSpec
    options: PoolOptions
    core_offset: int  # first CPU core index of this pool's engines
    lora_adapters: dict[str, str] = field(default_factory=dict)
    admission: AdmissionLimits = AdmissionLimits()


@dataclass(frozen=True)
class DeploymentPlan:
    prefill: tuple[EnginePool, ...]
    decode: tuple[EnginePool, ...]
    roles: tuple[ServedRole, ...]
    base_model: str  # resolved folder: the tokenizer and chat template come from here


def engine_pools(cfg: AppConfig) -> dict[str, PoolOptions]:
    """Serve deployment name -> its pool options, for every engine deployment the app creates.
    Pure (no model resolution): the k8s renderer places these on node pools."""
    pools: dict[str, PoolOptions] = {
        prefill_deployment_name(name): pool for name, pool in cfg.prefill_pools.items()}
    for role in cfg.roles:
        if not role.lora_adapter:
            pools[decode_deployment_name(role)] = role.decode_pool
    if cfg.lora_pool is not None:  # runs even with no LoRA role yet: roles can be added live
        pools[f"decode-{LORA_POOL}"] = cfg.lora_pool
    return pools


def make_plan(cfg: AppConfig) -> DeploymentPlan:
    base = resolve_model(cfg.base_model)
    core = 0
    prefill: list[EnginePool] = []
    prefill_models: dict[str, str] = {}
    for name, pool in cfg.prefill_pools.items():
        model = resolve_model(cfg.prefill_model(name))
        prefill_models[name] = model
        spec = EngineSpec(model=model, side="producer", options=pool.engine,
                          prefix_caching=True, engine_id=f"prefill-{name}")
        prefill.append(EnginePool(prefill_deployment_name(name), name, spec, pool, core,
                                  admission=_admission(cfg, pool)))
        core += pool.replicas * pool.engine.cpu_threads

    decode: list[EnginePool] = []
    roles: list[ServedRole] = []
    lora_roles = [r for r in cfg.roles if r.lora_adapter]
    for role in cfg.roles:
        if role.lora_adapter:
            continue
        model = resolve_model(cfg.decoder_model(role))
        spec = _decode_spec(cfg, role, model, prefill_models[role.prefill_pool],
                            cfg.prefill_pools[role.prefill_pool].engine.dtype)
        decode.append(EnginePool(decode_deployment_name(role), role.name, spec, role.decode_pool,
                                 core, admission=_admission(cfg, role.decode_pool)))
        core += role.decode_pool.replicas * role.decode_pool.engine.cpu_threads
        roles.append(served_role(role))
    if cfg.lora_pool is not None:
        # Started even without a LoRA role: `prefillshare roles add` can give it one later.
        lp = cfg.lora_pool
        pools = {r.prefill_pool for r in lora_roles} or set(cfg.prefill_pools)
        for pool_name in pools:
            _check_pair(cfg, base, prefill_models[pool_name], lp.engine.dtype,
                        cfg.prefill_pools[pool_name].engine.dtype, "lora_pool")
        spec = EngineSpec(model=base, side="consumer", options=lp.engine,
                          prefix_caching=cfg.decode_kv_mode == "reuse",
                          engine_id=f"decode-{LORA_POOL}",
                          kv_load_failure_policy=cfg.kv_load_failure_policy,
                          enforce_handshake_compat=all(prefill_models[p] == base for p in pools),
                          lora=(lp.max_lora_rank, lp.max_loras))
        adapters = {r.name: str(check_adapter(r.lora_adapter, base, lp.max_lora_rank))
                    for r in lora_roles if r.lora_adapter}
        decode.append(EnginePool(f"decode-{LORA_POOL}", LORA_POOL, spec, lp, core, adapters,
                                 _admission(cfg, lp)))
        roles += [served_role(r, adapters[r.name]) for r in lora_roles]
    order = {r.name: i for i, r in enumerate(cfg.roles)}
    roles.sort(key=lambda r: order[r.name])
    return DeploymentPlan(tuple(prefill), tuple(decode), tuple(roles), base)


def _admission(cfg: AppConfig, pool: PoolOptions) -> AdmissionLimits:
    return AdmissionLimits(pool.max_waiting, pool.max_kv_usage, cfg.limits.retry_after_s)


def _decode_spec(cfg: AppConfig, role: RoleConfig, model: str, prefill_model: str,
                 prefill_dtype: str) -> EngineSpec:
    same_checkpoint = model == prefill_model
    if not same_checkpoint:
        _check_pair(cfg, model, prefill_model, role.decode_pool.engine.dtype, prefill_dtype,
                    f"roles.{role.name}.decoder")
        problem = base_mismatch(Path(model), Path(prefill_model))
        if problem:
            raise ValueError(f"roles.{role.name}.decoder: {problem}")
    return EngineSpec(
        model=model,
        side="consumer",
        options=role.decode_pool.engine,
        # exact: a decode engine never reuses KV it holds, so every context token carries
        # base KV pulled from prefill (its own generated tokens' KV is never reused).
        prefix_caching=cfg.decode_kv_mode == "reuse",
        engine_id=f"decode-{role.name}",
        kv_load_failure_policy=role.kv_load_failure_policy or cfg.kv_load_failure_policy,
        enforce_handshake_compat=same_checkpoint,
    )


def _check_pair(cfg: AppConfig, decoder: str, prefill: str, decoder_dtype: str,
                prefill_dtype: str, where: str) -> None:
    if cfg.check_kv_compat:
        check_kv_compatible(prefill, prefill_dtype, decoder, decoder_dtype, where=where)

