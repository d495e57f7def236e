"""Reading Serve config files (deployments/serve_config.py) and the `prefillshare` CLI
(deployments/cli.py); no cluster is started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.cli import build_parser, main
from deployments.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from deployments.serve_config import IMPORT_PATH, load_serve_file
from vllm_runtime.model_assets import cache_dir, tiny_llama_folder
from vllm_runtime.replica_env import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models() -> dict[str, str]:
    root = cache_dir()
    return {
        "a": str(tiny_llama_folder(root / "tiny-unit-a", seed=11)),
        "c": str(tiny_llama_folder(root / "tiny-unit-c", seed=13, num_layers=3)),
    }


def _serve_file(path: Path, args: dict[str, Any], **top: Any) -> Path:
    doc = {"applications": [{"name": "ps", "route_prefix": "/api",
                             "import_path": IMPORT_PATH, "args": args}], **top}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_repos_config_yaml_loads():
    sf = load_serve_file(REPO / "config.yaml")
    assert sf.app_name == "prefillshare"
    assert (sf.http_host, sf.http_port, sf.route_prefix) == ("127.0.0.1", 8000, "/")
    assert [r.name for r in sf.app.roles] == ["planner", "coder", "tool_caller", "critic"]
    assert sf.app.base_model == "smollm2"
    assert sf.app.decode_kv_mode == "exact"


def test_serve_file_fields_and_defaults(tmp_path):
    path = _serve_file(tmp_path / "c.yaml", {"roles": [{"name": "a"}]},
                       http_options={"port": 9001})
    sf = load_serve_file(str(path))
    assert (sf.app_name, sf.route_prefix, sf.http_host, sf.http_port) == (
        "ps", "/api", "127.0.0.1", 9001)
    assert sf.raw["applications"][0]["import_path"] == IMPORT_PATH


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nope.yaml: no such file"):
        load_serve_file(tmp_path / "nope.yaml")


def test_bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("applications: [\n  - name: x\n    args: {roles: [\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        load_serve_file(path)


@pytest.mark.parametrize("doc", ["just text", "applications: {a: 1}", "other: 1"])
def test_not_a_serve_config(tmp_path, doc):
    path = tmp_path / "x.yaml"
    path.write_text(doc)
    with pytest.raises(ValueError, match="expected a Serve config with an `applications:` list"):
        load_serve_file(path)


def test_no_matching_application(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({"applications": [{"name": "o", "import_path": "other:app"}]}))
    with pytest.raises(ValueError, match=f"exactly one application with import_path {IMPORT_PATH}"):
        load_serve_file(path)


def test_invalid_args_name_the_field(tmp_path):
    from contract.config import ConfigError

    path = _serve_file(tmp_path / "c.yaml", {"roles": [{"name": "a", "colour": "red"}]})
    with pytest.raises(ConfigError, match=r"roles\.0\.colour: Extra inputs"):
        load_serve_file(path)


@pytest.mark.parametrize("command", ["validate", "prepare", "up", "status"])
def test_help_for_every_subcommand(capsys, command):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: prefillshare {command}")


def test_top_level_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: prefillshare")
    for command in ("validate", "prepare", "up", "status"):
        assert command in out


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: prefillshare" in capsys.readouterr().err


def test_validate_ok(tmp_path, capsys, models):
    path = _serve_file(tmp_path / "c.yaml", {"base_model": models["a"],
                                             "roles": [{"name": "planner"}, {"name": "coder"}]})
    assert main(["validate", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "ok: 1 prefill pool(s), 2 decode pool(s), roles ['planner', 'coder']" in out


def test_validate_bad_config(tmp_path, capsys, models):
    path = _serve_file(tmp_path / "c.yaml", {"base_model": models["a"],
                                             "roles": [{"name": "a"}, {"name": "a"}]})
    assert main(["validate", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("prefillshare: invalid config: ")
    assert "duplicate role names ['a']" in err


def test_validate_incompatible_decoder(tmp_path, capsys, models):
    path = _serve_file(tmp_path / "c.yaml", {
        "base_model": models["a"], "roles": [{"name": "coder", "decoder": models["c"]}]})
    assert main(["validate", str(path)]) == EXIT_USAGE
    assert "roles.coder.decoder: " in capsys.readouterr().err


def test_validate_missing_model_and_missing_file(tmp_path, capsys):
    path = _serve_file(tmp_path / "c.yaml", {"base_model": str(tmp_path / "no-model"),
                                             "roles": [{"name": "a"}]})
    assert main(["validate", str(path)]) == EXIT_USAGE
    assert "no-model" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "absent.yaml")]) == EXIT_USAGE
    assert "absent.yaml: no such file" in capsys.readouterr().err


def test_status_without_a_cluster_fails(capsys):
    port = free_port("127.0.0.1")  # nothing listens there
    code = main(["status", "--address", f"http://127.0.0.1:{port}", "--token-file", ""])
    assert code == EXIT_FAILED
    assert f"no cluster at http://127.0.0.1:{port}" in capsys.readouterr().err
