"""The application's config schema: what `serve deploy config.yaml` passes as app args.

Pure pydantic (no Ray, no vLLM import), validated in the CLI before anything starts and again
in the app builder, so a bad config fails at once with one message naming the field.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contract.routing_policies import RoutingPolicyName

SHARED_PREFILL_POOL = "shared"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineOptions(_Strict):
    """The vLLM engine knobs a pool sets; anything else goes through ``extra``."""

    max_model_len: int = Field(2048, ge=16, description="Longest prompt + output, in tokens.")
    kv_cache_space_gib: float = Field(
        1.0, gt=0, description="KV cache memory per engine (VLLM_CPU_KVCACHE_SPACE on CPU)."
    )
    block_size: int = Field(
        128, ge=16, multiple_of=16,
        description="KV block size in tokens; prefill and decode must agree (CPU: multiple of 32).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_num_seqs: int = Field(32, ge=1, description="Most requests one engine runs at once.")
    max_num_batched_tokens: int | None = Field(None, ge=16)
    enforce_eager: bool = True
    cpu_threads: int = Field(
        1, ge=1, description="OpenMP threads per engine on CPU (VLLM_CPU_OMP_THREADS_BIND)."
    )
    kv_lease_duration_s: int = Field(
        30, ge=1, description="How long prefill holds a request's blocks for the decode pull."
    )
    start_timeout_s: float = Field(
        900, gt=0, description="An engine not ready this long after its replica started is "
        "stopped, and Serve starts the replica again (vLLM can hang in start for good).")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Passed to vLLM's AsyncEngineArgs as is."
    )


class PoolOptions(_Strict):
    """One Serve deployment of engines."""

    replicas: int = Field(1, ge=1)
    num_cpus: float = Field(
        0, ge=0, description="Ray CPUs per replica; 0 so engines do not starve a small cluster."
    )
    num_gpus: float = Field(
        0, ge=0, description="Ray GPUs per replica (an engine's tensor-parallel size on GPU nodes)."
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per replica: pins the pool to the nodes that advertise "
        "them (the node-pool placement `prefillshare render-k8s` writes); empty: anywhere.",
    )
    max_ongoing_requests: int = Field(32, ge=1)
    max_waiting: int | None = Field(
        None, ge=0, description="Admission control: an engine with more requests than this "
        "waiting for a slot answers 503 + Retry-After (the ingress tries another replica "
        "first); null: no limit.")
    max_kv_usage: float | None = Field(
        None, gt=0, le=1, description="Admission control: an engine whose KV cache is fuller "
        "than this fraction refuses new requests the same way; null: no limit.")
    engine: EngineOptions = Field(default_factory=EngineOptions)


class PrefillPoolConfig(PoolOptions):
    model: str | None = Field(
        None, description="Checkpoint this pool prefills with; default: the base model."
    )


class LoraPoolConfig(PoolOptions):
    max_lora_rank: int = Field(16, ge=1)
    max_loras: int = Field(4, ge=1)


class RoleConfig(_Strict):
    """One agent role: an OpenAI `model` name backed by a decoder."""

    name: str
    decoder: str | None = Field(
        None, description="Decoder checkpoint (folder or alias); default: the base model."
    )
    lora_adapter: str | None = Field(
        None, description="A PEFT adapter folder: served by the shared LoRA decode pool."
    )
    decode_pool: PoolOptions = Field(default_factory=PoolOptions)
    prefill_pool: str = Field(
        SHARED_PREFILL_POOL,
        description="Which prefill pool builds this role's KV (baseline: the role's own).",
    )
    instructions: str | None = Field(
        None, description="Role-specific text placed after the shared context."
    )
    kv_load_failure_policy: Literal["fail", "recompute"] | None = Field(
        None, description="Overrides the app's policy for this role's decode pool."
    )
    default_max_tokens: int | None = Field(
        None, ge=1, description="Output limit of a request without max_tokens; default: the "
        "rest of the context window (as vLLM).")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("role names are letters, digits, '_' or '-', starting with a letter")
        return v

    @model_validator(mode="after")
    def _one_decoder(self) -> RoleConfig:
        if self.decoder and self.lora_adapter:
            raise ValueError("a role has either `decoder` or `lora_adapter`, not both")
        return self


class RoutingConfig(_Strict):
    session_header: str = "x-session-id"
    prefill_policy: RoutingPolicyName = Field(
        "prefix_locality",
        description="Prefill pool routing: ours (session + prefix + bounded load), or a baseline.",
    )
    decode_policy: RoutingPolicyName | None = Field(
        None,
        description="Decode pools; default: prefix_locality when decode_kv_mode is reuse (the "
        "replica that served the session's last turn holds its blocks), else least_loaded.",
    )
    load_bound: float = Field(
        1.5, ge=1.0, description="A replica above this multiple of the mean load is skipped."
    )
    load_absolute_threshold: float = Field(
        4.0, ge=0, description="In-flight requests below which the load bound never applies."
    )
    prefer_prefix_over_session: bool = Field(
        True, description="Longest cached prefix first, session home second (ties go home)."
    )
    stats_period_s: float = Field(2.0, gt=0, description="How often replicas report load.")
    kv_events: bool = Field(
        False, description="Prefill engines publish vLLM KV cache events; the router's prefix "
        "index then follows what each engine really stores and evicts (off: the router's own "
        "record of what it sent where).")
    kv_events_keep_sent_s: float = Field(
        30.0, gt=0, description="With kv_events: the router's own sends of this many seconds "
        "outlive an engine snapshot that does not show them yet (it may predate their prefill).")
    max_retries: int = Field(2, ge=0, description="Retries on another replica after a replica dies.")


class TimeoutsConfig(_Strict):
    """Per stage; each failure is a 504 whose error code names the stage."""

    prefill_s: float = Field(120, gt=0, description="The prefill call (code prefill_timeout).")
    kv_pull_s: float = Field(
        120, gt=0, description="Decode call until the KV is in the decode engine (kv_pull_timeout).")
    first_token_s: float = Field(
        120, gt=0, description="KV loaded until the first decode token (first_token_timeout).")
    request_s: float = Field(600, gt=0, description="The whole request (request_timeout).")


class RateLimitConfig(_Strict):
    """A token bucket: ``burst`` requests at once, refilled at ``requests_per_s``."""

    requests_per_s: float = Field(gt=0)
    burst: int = Field(10, ge=1)


class ApiKeyConfig(_Strict):
    name: str = Field(description="Names the key in logs and rate limits (never the key itself).")
    # repr=False: a logged or printed config does not show the key.
    key: str = Field(min_length=16, repr=False,
                     description="Inline keys are visible to whoever reads the Serve config; "
                     "prefer auth.keys_file (a Kubernetes Secret) or auth.keys_env.")
    roles: list[str] | None = Field(None, description="Roles this key may use; null: all.")
    rate_limit: RateLimitConfig | None = Field(None, description="Overrides limits.rate_limit.")


class AuthConfig(_Strict):
    """API keys (docs/security.md). Off by default, for the local two-command run."""

    enabled: bool = False
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    keys_env: str | None = Field(
        "PREFILLSHARE_API_KEYS",
        description="Environment variable of the ingress holding `KEY` or `KEY:role,role` entries.")
    keys_file: str | None = Field(
        None, description="File of `KEY` or `KEY:role,role` entries, one a line (a mounted "
        "Secret); re-read when it changes.")
    reload_s: float = Field(30, gt=0, description="How often the keys file is checked for changes.")


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Larger request bodies get 413.")
    max_messages: int = Field(
        256, ge=1, description="Most chat messages in one request (prompt building is "
        "superlinear in the message count).")
    rate_limit: RateLimitConfig | None = Field(
        None, description="Per API key (with auth off: one bucket for all clients); per ingress "
        "replica.")
    max_inflight: int | None = Field(
        None, ge=1, description="Admission control: requests in the P/D pipeline per ingress "
        "replica; more get 503 + Retry-After at once; null: no limit.")
    retry_after_s: int = Field(
        2, ge=1, description="The Retry-After of an admission-control 503 (ingress and engines).")


class AppConfig(_Strict):
    """The whole application: `args:` of config.yaml."""

    base_model: str = Field("smollm2", description="Frozen base checkpoint (folder or alias).")
    prefill_pools: dict[str, PrefillPoolConfig] = Field(
        default_factory=lambda: {SHARED_PREFILL_POOL: PrefillPoolConfig()}
    )
    roles: list[RoleConfig] = Field(min_length=1)
    lora_pool: LoraPoolConfig | None = None
    decode_kv_mode: Literal["exact", "reuse"] = Field(
        "exact",
        description="exact: decode engines never reuse their own KV (every context token carries "
        "base KV, the paper's semantics); reuse: decode-side prefix caching, fewer bytes pulled.",
    )
    kv_load_failure_policy: Literal["fail", "recompute"] = Field(
        "fail", description="On a failed KV pull: fail the request (5xx) or recompute locally."
    )
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    ingress_replicas: int = Field(1, ge=1)
    check_kv_compat: bool = Field(
        True, description="Compare decoder and prefill model KV layouts before serving."
    )
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)

    @model_validator(mode="after")
    def _auth_checks(self) -> AppConfig:
        roles = {r.name for r in self.roles}
        names = [k.name for k in self.auth.api_keys]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"auth.api_keys: duplicate key names {dupes}")
        for k in self.auth.api_keys:
            unknown = sorted(set(k.roles or ()) - roles)
            if unknown:
                raise ValueError(f"auth.api_keys.{k.name}.roles: unknown roles {unknown}")
        a = self.auth
        if a.enabled and not (a.api_keys or a.keys_env or a.keys_file):
            raise ValueError("auth.enabled needs api_keys, keys_env or keys_file")
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> AppConfig:
        names = [r.name for r in self.roles]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"roles: duplicate role names {dupes}")
        for name in self.prefill_pools:
            if not _NAME.match(name):
                raise ValueError(f"prefill_pools: bad pool name {name!r}")
        for role in self.roles:
            if role.prefill_pool not in self.prefill_pools:
                raise ValueError(
                    f"roles.{role.name}.prefill_pool: no prefill pool named {role.prefill_pool!r} "
                    f"(have {sorted(self.prefill_pools)})"
                )
            if role.lora_adapter and self.lora_pool is None:
                raise ValueError(f"roles.{role.name}.lora_adapter needs a `lora_pool` section")
            pool = self.prefill_pools[role.prefill_pool]
            # A LoRA role decodes on the shared lora_pool; its own decode_pool is unused.
            if role.lora_adapter and self.lora_pool is not None:
                decode_field, decode_engine = "lora_pool.engine", self.lora_pool.engine
            else:
                decode_field = f"roles.{role.name}.decode_pool.engine"
                decode_engine = role.decode_pool.engine
            if decode_engine.block_size != pool.engine.block_size:
                raise ValueError(
                    f"{decode_field}.block_size ({decode_engine.block_size}) must equal prefill "
                    f"pool {role.prefill_pool!r} block_size ({pool.engine.block_size})"
                )
        return self

    def prefill_model(self, pool: str) -> str:
        return self.prefill_pools[pool].model or self.base_model

    def decoder_model(self, role: RoleConfig) -> str:
        return role.decoder or self.base_model

    def role(self, name: str) -> RoleConfig:
        for r in self.roles:
            if r.name == name:
                return r
        raise KeyError(name)


class ConfigError(ValueError):
    """A bad application config; the message names the field."""


def load_config(args: dict[str, Any] | AppConfig) -> AppConfig:
    """The app args (a dict from YAML, or an AppConfig) validated, or one ConfigError."""
    from pydantic import ValidationError

    if isinstance(args, AppConfig):
        return args
    try:
        return AppConfig.model_validate(args)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def format_validation_error(exc: Exception) -> str:
    """One line per problem, each naming the field path, for CLI and builder errors."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(config)"
        lines.append(f"{loc}: {err['msg']}")
    return "invalid config: " + "; ".join(lines)
