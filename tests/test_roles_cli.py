"""`prefillshare roles` (deployments/roles_cli.py): the deploy body it sends changes only the
ingress' user_config (the same app args: Serve reconfigures, nothing restarts), and it refuses a
bad role before anything reaches the cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployments.roles_cli import app_config_of, checked_role, current_roles, with_roles
from vllm_runtime.decoder_identity import IDENTITY_FILE, model_identity
from vllm_runtime.model_assets import cache_dir, tiny_llama_folder


@pytest.fixture(scope="module")
def base() -> str:
    return str(tiny_llama_folder(cache_dir() / "tiny-unit-a", seed=11).resolve())


def details(base: str, deployments: list | None = None) -> dict:
    app = {"name": "ps", "import_path": "deployments.app:build_app", "route_prefix": "/",
           "args": {"base_model": base, "lora_pool": {"max_lora_rank": 8},
                    "roles": [{"name": "planner"}]}}
    if deployments is not None:
        app["deployments"] = deployments
    other = {"name": "other", "import_path": "x:y", "route_prefix": "/other"}
    return {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": 8000},
            "applications": {"ps": {"deployed_app_config": app},
                             "other": {"deployed_app_config": other}}}


def test_the_body_changes_only_the_ingress_user_config(base):
    d = details(base, [{"name": "prefill-shared", "num_replicas": 2},
                       {"name": "ingress", "num_replicas": 3}])
    roles = [{"name": "planner"}, {"name": "coder", "lora_adapter": "/a/coder"}]
    body = with_roles(d, "ps", roles)
    ps, other = body["applications"]
    assert other == d["applications"]["other"]["deployed_app_config"]  # untouched
    assert ps["args"] == d["applications"]["ps"]["deployed_app_config"]["args"]  # same version
    assert ps["deployments"] == [{"name": "prefill-shared", "num_replicas": 2},
                                 {"name": "ingress", "num_replicas": 3,
                                  "user_config": {"roles": roles}}]
    assert body["http_options"] == d["http_options"]
    assert current_roles(ps) == roles
    assert current_roles(d["applications"]["ps"]["deployed_app_config"]) == [{"name": "planner"}]
    with pytest.raises(LookupError, match="no application 'nope'"):
        app_config_of(d, "nope")


def test_an_added_role_is_checked_and_its_adapter_path_made_absolute(base, tmp_path,
                                                                     monkeypatch):
    folder = tmp_path / "coder"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    (folder / IDENTITY_FILE).write_text(json.dumps({"base": model_identity(Path(base))}))
    monkeypatch.chdir(tmp_path)
    app = app_config_of(details(base), "ps")
    assert checked_role(app, {"name": "coder", "lora_adapter": "coder"}) == \
        {"name": "coder", "lora_adapter": str(folder)}
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16}))
    with pytest.raises(ValueError, match="rank 16 is above the pool.s max_lora_rank 8"):
        checked_role(app, {"name": "coder", "lora_adapter": "coder"})
    with pytest.raises(ValueError, match="no prefill pool 'x'"):
        checked_role(app, {"name": "coder", "lora_adapter": "coder", "prefill_pool": "x"})
    with pytest.raises(ValueError, match="extra"):
        checked_role(app, {"name": "coder", "adapter": "coder"})
