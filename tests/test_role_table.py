"""Roles without a redeploy (router_service/role_table.py, decode_service/lora_requests.py):
what a running app takes as a user_config update of its ingress, what it rejects (with the
other roles still served), how the HTTP API follows, and how the LoRA pool names adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from decode_service.lora_requests import LoraRequests
from router_service.role_table import RoleTable, ServingFacts, resolve_roles
from tests.api_fixtures import chat_body, http_client, make_app
from vllm_runtime.decoder_identity import IDENTITY_FILE, model_identity
from vllm_runtime.model_assets import cache_dir, tiny_llama_folder


@pytest.fixture(scope="module")
def base() -> str:
    return str(tiny_llama_folder(cache_dir() / "tiny-unit-a", seed=11).resolve())


@pytest.fixture(scope="module")
def other_base() -> str:
    return str(tiny_llama_folder(cache_dir() / "tiny-unit-b", seed=12).resolve())


def adapter(root: Path, name: str, base: str, rank: int = 8) -> str:
    folder = root / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    (folder / IDENTITY_FILE).write_text(json.dumps({"base": model_identity(Path(base))}))
    return str(folder)


def facts(base: str, lora: bool = True) -> ServingFacts:
    decode = {"decode-planner", "decode-lora"} if lora else {"decode-planner"}
    return ServingFacts(base, frozenset({"prefill-shared"}), frozenset(decode),
                        16 if lora else None)


def test_lora_roles_resolve_to_their_checked_folders(base, tmp_path):
    coder = adapter(tmp_path, "coder", base)
    roles, rejected = resolve_roles(
        {"roles": [{"name": "planner", "instructions": "plan"},
                   {"name": "coder", "lora_adapter": coder, "default_max_tokens": 64}]},
        facts(base))
    assert rejected == []
    planner, served = roles
    assert (planner.decode_deployment, planner.lora_name, planner.instructions) == \
        ("decode-planner", None, "plan")
    assert (served.decode_deployment, served.lora_name, served.lora_path,
            served.default_max_tokens) == ("decode-lora", "coder", coder, 64)


def test_bad_roles_are_rejected_with_their_reason_and_the_rest_serve(base, other_base, tmp_path):
    update = {"roles": [
        {"name": "planner"},
        {"name": "critic"},  # a decode pool of its own that this app does not run
        {"name": "coder", "lora_adapter": str(tmp_path / "missing")},
        {"name": "big", "lora_adapter": adapter(tmp_path, "big", base, rank=32)},
        {"name": "alien", "lora_adapter": adapter(tmp_path, "alien", other_base)},
        {"name": "elsewhere", "prefill_pool": "other", "lora_adapter": adapter(tmp_path, "e", base)},
    ]}
    roles, rejected = resolve_roles(update, facts(base))
    assert [r.name for r in roles] == ["planner"]
    why = {r.name: r.reason for r in rejected}
    assert "needs a decode pool of its own" in why["critic"]
    assert "no adapter_config.json" in why["coder"]
    assert "rank 32 is above the pool's max_lora_rank 16" in why["big"]
    assert "was trained on base" in why["alien"]
    assert "no prefill pool 'other'" in why["elsewhere"]
    roles, rejected = resolve_roles({"roles": [{"name": "x", "lora_adapter": "adapters/planner"}]},
                                    facts(base, lora=False))
    assert roles == [] and "runs no LoRA pool" in rejected[0].reason


def test_an_unusable_update_raises_so_serve_keeps_the_current_roles(base):
    with pytest.raises(ValueError, match="duplicate role names"):
        resolve_roles({"roles": [{"name": "a"}, {"name": "a"}]}, facts(base))
    with pytest.raises(ValueError, match="user_config.roles"):
        resolve_roles({"roles": [{"name": "a", "colour": "red"}]}, facts(base))
    with pytest.raises(ValueError, match="user_config.roles"):
        resolve_roles({}, facts(base))


async def test_the_api_follows_the_table_it_was_built_with(base, tmp_path):
    first, _ = resolve_roles({"roles": [{"name": "planner"}]}, facts(base))
    table = RoleTable(first)
    app, backend = make_app(roles=table)
    async with http_client(app) as client:
        assert [m["id"] for m in (await client.get("/v1/models")).json()["data"]] == ["planner"]
        assert (await client.post("/v1/chat/completions", json=chat_body(model="coder"))
                ).status_code == 404
        # A role added and one removed, as Ingress.reconfigure does on a user_config update.
        table.replace(*resolve_roles({"roles": [{"name": "coder", "lora_adapter":
                                                 adapter(tmp_path, "coder", base)}]}, facts(base)))
        assert [m["id"] for m in (await client.get("/v1/models")).json()["data"]] == ["coder"]
        ok = await client.post("/v1/chat/completions", json=chat_body(model="coder"))
        assert ok.status_code == 200 and ok.json()["model"] == "coder"
        gone = await client.post("/roles/planner/v1/chat/completions", json=chat_body())
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


def test_lora_requests_get_a_new_id_per_folder_so_a_replaced_adapter_loads_afresh():
    made: list[tuple[str, int, str]] = []
    reqs = LoraRequests({"planner": "/a/planner", "coder": "/a/coder"},
                        make=lambda *args: made.append(args) or args)
    assert made == [("coder", 1, "/a/coder"), ("planner", 2, "/a/planner")]
    assert reqs.get("planner", "/a/planner") == ("planner", 2, "/a/planner")  # no new id
    assert reqs.get("critic", "/b/critic") == ("critic", 3, "/b/critic")  # added while running
    assert reqs.get("planner", "/b/planner") == ("planner", 4, "/b/planner")  # replaced
    assert reqs.get("planner", None) == ("planner", 4, "/b/planner")  # name only: the latest
    assert reqs.get("nobody", None) is None


def test_the_table_lists_its_roles_in_order_and_swaps_whole(base):
    first, _ = resolve_roles({"roles": [{"name": "planner"}]}, facts(base))
    table = RoleTable(first)
    assert [r.name for r in table.roles()] == ["planner"]
    table.replace([], [])
    assert table.roles() == [] and table.names() == []
