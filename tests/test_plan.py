"""Planning engines and routes from a config (deployments/plan.py), on tiny model folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from contract.config import AppConfig
from deployments.kv_compat import KvIncompatible
from deployments.plan import make_plan
from vllm_runtime.decoder_identity import IDENTITY_FILE, model_identity
from vllm_runtime.lora_adapters import PROJECT_ROOT, AdapterRejected, find_adapter
from vllm_runtime.model_assets import cache_dir, smollm2_folder, tiny_llama_folder


@pytest.fixture(scope="module")
def models() -> dict[str, str]:
    """a: the base; b: other weights, same KV layout; c: one more layer (incompatible)."""
    root = cache_dir()
    return {
        "a": str(tiny_llama_folder(root / "tiny-unit-a", seed=11).resolve()),
        "b": str(tiny_llama_folder(root / "tiny-unit-b", seed=12).resolve()),
        "c": str(tiny_llama_folder(root / "tiny-unit-c", seed=13, num_layers=3).resolve()),
    }


def _adapter(root: Path, name: str, rank: int = 4, base: str | None = None) -> str:
    """An adapter folder as the checks see it (the weights' bytes are vLLM's business); with
    ``base``, the identity training writes beside it."""
    folder = root / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    if base is not None:
        (folder / IDENTITY_FILE).write_text(json.dumps({"base": model_identity(Path(base))}))
    return str(folder)


def _plan(models: dict[str, str], **args: Any):
    args.setdefault("base_model", models["a"])
    args.setdefault("roles", [{"name": "planner"}, {"name": "coder"}])
    return make_plan(AppConfig.model_validate(args))


def test_shared_prefill_pool_feeds_every_role(models):
    plan = _plan(models, roles=[{"name": "planner", "instructions": "plan it"}, {"name": "coder"}])
    assert plan.base_model == models["a"]
    [prefill] = plan.prefill
    assert (prefill.name, prefill.pool) == ("prefill-shared", "shared")
    assert prefill.spec.side == "producer"
    assert prefill.spec.prefix_caching is True
    assert prefill.spec.model == models["a"]
    assert prefill.spec.engine_id == "prefill-shared"

    assert [d.name for d in plan.decode] == ["decode-planner", "decode-coder"]
    for d in plan.decode:
        assert d.spec.side == "consumer"
        assert d.spec.model == models["a"]
        assert d.spec.engine_id == d.name
        assert d.spec.enforce_handshake_compat is True  # same checkpoint: vLLM's own check holds
        assert d.spec.lora is None and d.lora_adapters == {}

    routes = [(r.name, r.prefill_deployment, r.decode_deployment, r.lora_name, r.instructions)
              for r in plan.roles]
    assert routes == [("planner", "prefill-shared", "decode-planner", None, "plan it"),
                      ("coder", "prefill-shared", "decode-coder", None, None)]


@pytest.mark.parametrize("mode, decode_caching", [("exact", False), ("reuse", True)])
def test_decode_prefix_caching_follows_the_kv_mode(models, mode, decode_caching):
    plan = _plan(models, decode_kv_mode=mode)
    assert plan.prefill[0].spec.prefix_caching is True
    assert [d.spec.prefix_caching for d in plan.decode] == [decode_caching, decode_caching]


def test_a_compatible_decoder_turns_the_handshake_check_off(models):
    plan = _plan(models, roles=[{"name": "planner"}, {"name": "coder", "decoder": models["b"]}])
    specs = {d.pool: d.spec for d in plan.decode}
    assert specs["planner"].enforce_handshake_compat is True
    assert specs["coder"].enforce_handshake_compat is False
    assert specs["coder"].model == models["b"]


def test_an_incompatible_decoder_is_refused_naming_the_role(models):
    with pytest.raises(KvIncompatible) as info:
        _plan(models, roles=[{"name": "planner"}, {"name": "coder", "decoder": models["c"]}])
    msg = str(info.value)
    assert msg.startswith("roles.coder.decoder: ")
    assert "num_layers: prefill 2 vs decoder 3" in msg


def test_check_kv_compat_off_skips_the_check(models):
    plan = _plan(models, check_kv_compat=False,
                 roles=[{"name": "coder", "decoder": models["c"]}])
    assert plan.decode[0].spec.enforce_handshake_compat is False


def test_a_missing_decoder_folder_is_reported(models, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        _plan(models, roles=[{"name": "coder", "decoder": str(tmp_path / "nothing")}])


def test_baseline_topology_gives_each_role_its_own_prefill_pool(models):
    plan = _plan(
        models,
        prefill_pools={"planner": {"model": models["a"]}, "coder": {"model": models["b"]}},
        roles=[{"name": "planner", "prefill_pool": "planner"},
               {"name": "coder", "decoder": models["b"], "prefill_pool": "coder"}],
    )
    assert [(p.name, p.spec.model) for p in plan.prefill] == [
        ("prefill-planner", models["a"]), ("prefill-coder", models["b"])]
    assert all(p.spec.side == "producer" for p in plan.prefill)
    assert {r.name: r.prefill_deployment for r in plan.roles} == {
        "planner": "prefill-planner", "coder": "prefill-coder"}
    # Each decoder reads KV of its own checkpoint: the handshake check stays on.
    assert [d.spec.enforce_handshake_compat for d in plan.decode] == [True, True]


def test_lora_roles_share_one_decode_pool(models, tmp_path):
    ad_p, ad_c = _adapter(tmp_path, "ad-planner"), _adapter(tmp_path, "ad-critic")
    plan = _plan(
        models,
        lora_pool={"max_lora_rank": 8, "max_loras": 3},
        roles=[{"name": "planner", "lora_adapter": ad_p}, {"name": "coder"},
               {"name": "critic", "lora_adapter": ad_c, "instructions": "be critical"}],
    )
    assert [d.name for d in plan.decode] == ["decode-coder", "decode-lora"]
    lora = plan.decode[1]
    assert lora.pool == "lora"
    assert lora.lora_adapters == {"planner": str(Path(ad_p).resolve()),
                                  "critic": str(Path(ad_c).resolve())}
    assert lora.spec.model == models["a"]
    assert lora.spec.side == "consumer"
    assert lora.spec.lora == (8, 3)
    assert lora.spec.engine_id == "decode-lora"
    assert lora.spec.enforce_handshake_compat is True
    # Roles keep the config's order, LoRA roles named after themselves.
    routes = [(r.name, r.decode_deployment, r.lora_name, r.instructions) for r in plan.roles]
    assert routes == [("planner", "decode-lora", "planner", None),
                      ("coder", "decode-coder", None, None),
                      ("critic", "decode-lora", "critic", "be critical")]


def test_a_lora_adapter_without_adapter_config_is_refused(models, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterRejected, match="no adapter_config.json"):
        _plan(models, lora_pool={},
              roles=[{"name": "planner", "lora_adapter": str(tmp_path / "empty")}])


def test_an_adapter_above_the_pools_rank_is_refused(models, tmp_path):
    with pytest.raises(AdapterRejected, match="rank 32 is above the pool's max_lora_rank 16"):
        _plan(models, lora_pool={"max_lora_rank": 16},
              roles=[{"name": "planner", "lora_adapter": _adapter(tmp_path, "big", rank=32)}])


def test_an_adapter_trained_on_another_base_is_refused(models, tmp_path):
    same = _adapter(tmp_path, "on-a", base=models["a"])
    other = _adapter(tmp_path, "on-b", base=models["b"])  # same KV layout, other weights
    plan = _plan(models, lora_pool={}, roles=[{"name": "planner", "lora_adapter": same}])
    assert plan.decode[0].lora_adapters == {"planner": str(Path(same).resolve())}
    with pytest.raises(AdapterRejected, match="was trained on base .*tiny-unit-b"):
        _plan(models, lora_pool={}, roles=[{"name": "planner", "lora_adapter": other}])


def test_a_decoder_trained_on_another_base_is_refused(models, tmp_path):
    decoder = tmp_path / "decoder"
    shutil.copytree(models["b"], decoder)
    (decoder / IDENTITY_FILE).write_text(json.dumps({"base": model_identity(Path(models["c"]))}))
    with pytest.raises(ValueError, match="^roles.coder.decoder: .* was trained on base"):
        _plan(models, roles=[{"name": "coder", "decoder": str(decoder)}])


def test_relative_adapter_paths_fall_back_to_the_checkout(tmp_path, monkeypatch):
    """`serve deploy` builds the app in a Ray task with another current directory: the
    committed adapters/ are still found from config.yaml's relative paths."""
    monkeypatch.chdir(tmp_path)
    assert find_adapter("adapters/planner") == PROJECT_ROOT / "adapters" / "planner"
    (tmp_path / "adapters" / "planner").mkdir(parents=True)
    (tmp_path / "adapters" / "planner" / "adapter_config.json").write_text("{}")
    assert find_adapter("adapters/planner") == tmp_path / "adapters" / "planner"  # cwd first


def test_lora_pool_on_another_checkpoints_prefill_turns_the_handshake_check_off(models, tmp_path):
    plan = _plan(models, prefill_pools={"shared": {"model": models["b"]}}, lora_pool={},
                 roles=[{"name": "planner", "lora_adapter": _adapter(tmp_path, "ad")}])
    assert plan.decode[0].spec.enforce_handshake_compat is False


def test_lora_pool_is_checked_against_its_prefill_model(models, tmp_path):
    with pytest.raises(KvIncompatible, match="^lora_pool: "):
        _plan(models, prefill_pools={"shared": {"model": models["c"]}}, lora_pool={},
              roles=[{"name": "planner", "lora_adapter": _adapter(tmp_path, "ad")}])


def test_core_offsets_increase_across_pools(models, tmp_path):
    plan = _plan(
        models,
        prefill_pools={"shared": {"replicas": 2, "engine": {"cpu_threads": 2}}},
        lora_pool={"replicas": 1},
        roles=[{"name": "planner", "decode_pool": {"replicas": 3}},
               {"name": "coder", "decode_pool": {"engine": {"cpu_threads": 2}}},
               {"name": "critic", "lora_adapter": _adapter(tmp_path, "ad")}],
    )
    offsets = [(p.name, p.core_offset) for p in (*plan.prefill, *plan.decode)]
    # prefill 2x2 cores, planner 3x1, coder 1x2, then the LoRA pool.
    assert offsets == [("prefill-shared", 0), ("decode-planner", 4), ("decode-coder", 7),
                       ("decode-lora", 9)]


def test_kv_load_failure_policy_per_role_override(models, tmp_path):
    plan = _plan(models, kv_load_failure_policy="fail", lora_pool={},
                 roles=[{"name": "planner"},
                        {"name": "coder", "kv_load_failure_policy": "recompute"},
                        {"name": "critic", "lora_adapter": _adapter(tmp_path, "ad")}])
    assert {d.pool: d.spec.kv_load_failure_policy for d in plan.decode} == {
        "planner": "fail", "coder": "recompute", "lora": "fail"}
    plan = _plan(models, kv_load_failure_policy="recompute")
    assert [d.spec.kv_load_failure_policy for d in plan.decode] == ["recompute", "recompute"]


def test_pool_options_reach_the_specs(models):
    plan = _plan(models, prefill_pools={"shared": {"engine": {"max_model_len": 512}}},
                 roles=[{"name": "coder", "decode_pool": {"replicas": 2,
                                                          "engine": {"max_num_seqs": 3}}}])
    assert plan.prefill[0].spec.options.max_model_len == 512
    assert plan.decode[0].options.replicas == 2
    assert plan.decode[0].spec.options.max_num_seqs == 3


def test_the_default_app_serves_the_committed_adapters_with_their_training_prompts():
    """config.yaml's roles are the trained ones: each names its adapter folder, with the role
    instructions its adapter was trained on (they are part of the prompt: training/roles.py),
    and the LoRA pool's rank fits every adapter."""
    from deployments.serve_config import load_serve_file
    from training.roles import ROLE_INSTRUCTIONS

    app = load_serve_file(PROJECT_ROOT / "config.yaml").app
    assert app.lora_pool is not None and len(app.roles) == app.lora_pool.max_loras
    for role in app.roles:
        assert role.lora_adapter == f"adapters/{role.name}"
        assert role.instructions == ROLE_INSTRUCTIONS[role.name]
        adapter = json.loads((find_adapter(role.lora_adapter) / "adapter_config.json").read_text())
        assert adapter["r"] <= app.lora_pool.max_lora_rank
        identity = json.loads((find_adapter(role.lora_adapter) / IDENTITY_FILE).read_text())
        assert identity["train_config"]["task"]["name"] == f"role_{role.name}"
        # The base this machine converted is byte for byte the one the adapter was trained on
        # (the conversion is deterministic), so the served base passes the identity check.
        assert identity["base"]["sha256"] == model_identity(smollm2_folder())["sha256"]


def test_a_lora_pool_without_lora_roles_still_runs_for_roles_added_later(models):
    plan = _plan(models, lora_pool={"max_lora_rank": 8}, roles=[{"name": "planner"}])
    assert [d.name for d in plan.decode] == ["decode-planner", "decode-lora"]
    lora = plan.decode[1]
    assert lora.lora_adapters == {} and lora.spec.lora == (8, 4)
    assert lora.spec.enforce_handshake_compat is True  # the shared pool prefills with the base
    assert [r.name for r in plan.roles] == ["planner"]
