"""The app config schema (contract/config.py) and load_config."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from contract.config import SHARED_PREFILL_POOL, AppConfig, format_validation_error


def _cfg(**over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"roles": [{"name": "planner"}, {"name": "coder"}]}
    args.update(over)
    return args


def _error(args: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        AppConfig.model_validate(args)
    return format_validation_error(info.value)


def test_defaults_are_valid():
    cfg = AppConfig.model_validate(_cfg())
    assert list(cfg.prefill_pools) == [SHARED_PREFILL_POOL]
    assert [r.name for r in cfg.roles] == ["planner", "coder"]
    assert cfg.decode_kv_mode == "exact"
    assert cfg.kv_load_failure_policy == "fail"
    assert cfg.prefill_model(SHARED_PREFILL_POOL) == cfg.base_model == "smollm2"
    assert cfg.decoder_model(cfg.role("coder")) == "smollm2"
    with pytest.raises(KeyError):
        cfg.role("nobody")


def test_roles_are_required():
    assert "roles" in _error({})


def test_duplicate_role_names():
    msg = _error(_cfg(roles=[{"name": "a"}, {"name": "b"}, {"name": "a"}]))
    assert "duplicate role names ['a']" in msg


def test_role_naming_a_missing_prefill_pool():
    msg = _error(_cfg(roles=[{"name": "a", "prefill_pool": "nope"}]))
    assert "roles.a.prefill_pool" in msg
    assert "'nope'" in msg and "['shared']" in msg


def test_decode_prefill_block_size_mismatch():
    msg = _error(_cfg(roles=[{"name": "a", "decode_pool": {"engine": {"block_size": 16}}}]))
    assert "roles.a.decode_pool.engine.block_size (16)" in msg
    assert "block_size (128)" in msg


def test_matching_non_default_block_sizes_pass():
    eng = {"engine": {"block_size": 16}}
    cfg = AppConfig.model_validate(
        {"prefill_pools": {"shared": eng}, "roles": [{"name": "a", "decode_pool": eng}]}
    )
    assert cfg.role("a").decode_pool.engine.block_size == 16


def test_lora_role_block_size_is_checked_against_the_lora_pool():
    eng = {"engine": {"block_size": 16}}
    # The role's own decode_pool is unused for a LoRA role: only lora_pool must match.
    AppConfig.model_validate({"prefill_pools": {"shared": eng}, "lora_pool": eng,
                              "roles": [{"name": "a", "lora_adapter": "/adapters/a"}]})
    msg = _error({"prefill_pools": {"shared": eng}, "lora_pool": {},
                  "roles": [{"name": "a", "lora_adapter": "/adapters/a", "decode_pool": eng}]})
    assert "lora_pool.engine.block_size (128)" in msg


def test_lora_adapter_needs_a_lora_pool():
    msg = _error(_cfg(roles=[{"name": "a", "lora_adapter": "/adapters/a"}]))
    assert "roles.a.lora_adapter needs a `lora_pool` section" in msg


def test_decoder_and_lora_adapter_are_exclusive():
    msg = _error(_cfg(lora_pool={},
                      roles=[{"name": "a", "decoder": "/m", "lora_adapter": "/adapters/a"}]))
    assert "either `decoder` or `lora_adapter`" in msg
    assert msg.startswith("invalid config: roles.0:")


@pytest.mark.parametrize("args, path", [
    (_cfg(unknown=1), "unknown"),
    (_cfg(routing={"retries": 3}), "routing.retries"),
    (_cfg(roles=[{"name": "a", "decode_pool": {"engine": {"kv_cache": 1}}}]),
     "roles.0.decode_pool.engine.kv_cache"),
])
def test_unknown_fields_are_rejected(args, path):
    msg = _error(args)
    assert f"{path}: Extra inputs are not permitted" in msg


@pytest.mark.parametrize("name", ["1st", "has space", "", "a" * 65, "dot.ted"])
def test_bad_role_names(name):
    msg = _error(_cfg(roles=[{"name": name}]))
    assert "roles.0.name" in msg
    assert "role names are letters" in msg


def test_good_role_names():
    names = ["a", "tool_caller", "critic-2", "A" + "b" * 63]
    cfg = AppConfig.model_validate(_cfg(roles=[{"name": n} for n in names]))
    assert [r.name for r in cfg.roles] == names


def test_bad_prefill_pool_name():
    assert "bad pool name 'has space'" in _error(
        _cfg(prefill_pools={"has space": {}}, roles=[{"name": "a", "prefill_pool": "has space"}])
    )


def test_format_validation_error_lists_every_problem_by_path():
    msg = _error(_cfg(ingress_replicas=0, timeouts={"prefill_s": -1}))
    assert msg.startswith("invalid config: ")
    problems = msg.removeprefix("invalid config: ").split("; ")
    assert len(problems) == 2
    assert problems[0].startswith("timeouts.prefill_s: ")
    assert problems[1].startswith("ingress_replicas: ")


def test_format_validation_error_passes_other_errors_through():
    assert format_validation_error(ValueError("plain")) == "plain"


def test_config_is_frozen():
    cfg = AppConfig.model_validate(_cfg())
    with pytest.raises(ValidationError):
        cfg.base_model = "other"  # type: ignore[misc]


def test_load_config_raises_one_config_error_naming_the_field():
    from contract.config import ConfigError, load_config

    with pytest.raises(ConfigError) as info:
        load_config(_cfg(routing={"load_bound": 0.5}))
    assert str(info.value).startswith("invalid config: routing.load_bound: ")
    assert isinstance(info.value, ValueError)
    assert info.value.__cause__ is None  # one message, not a pydantic traceback chain


def test_load_config_accepts_dicts_and_configs():
    from contract.config import load_config

    cfg = load_config(_cfg())
    assert load_config(cfg) is cfg
