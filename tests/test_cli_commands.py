"""The one `prefillshare` command line: --help for every subcommand (including those that
delegate to training, bench, k8s and observability) and the exit codes scripts rely on:
0 ok, 1 runtime failure, 2 bad usage or config. Nothing here starts a cluster or an engine."""

from __future__ import annotations

import pytest
import yaml

from deployments import cli_delegate
from deployments.cli import DELEGATED, GROUPS, build_parser, main
from vllm_runtime.replica_env import free_port

BUILT_IN = ["validate", "prepare", "up", "serve", "status", "deploy"]
ALL = [*BUILT_IN, *DELEGATED, *GROUPS, *(f"{g} {m}" for g, ms in GROUPS.items() for m in ms)]


def exit_code(argv: list[str]) -> int:
    """main()'s return value, or the code argparse exits with."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize("command", ALL)
def test_every_subcommand_has_help(command, capsys):
    assert exit_code([*command.split(), "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and len(out.splitlines()) > 2, out


def test_top_level_help_lists_every_subcommand(capsys):
    assert exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    for command in [*BUILT_IN, *DELEGATED, *GROUPS]:
        assert command in out


def test_bench_help_lists_its_members(capsys):
    assert exit_code(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in GROUPS["bench"])


@pytest.mark.parametrize("argv", [
    [], ["nonsense"], ["bench"], ["bench", "nope"], ["eval"], ["up", "--ray-port", "x"],
    ["train", "--config", "/nonexistent/train.yaml"],
    ["bench", "compare", "--loads", "fast"],
    ["render-k8s", "/nonexistent/config.yaml"],
    ["deploy", "/nonexistent/config.yaml"],
    ["push-dashboard", "--grafana-url", "grafana:3000"],
    ["push-dashboard"],
])
def test_bad_usage_or_config_exits_2(argv, capsys, monkeypatch):
    monkeypatch.delenv("GRAFANA_URL", raising=False)
    assert exit_code(argv) == 2
    assert capsys.readouterr().err.strip()  # says why, on stderr


def test_an_invalid_training_config_exits_2_naming_the_field(tmp_path, capsys):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"base_model": "smollm2", "colour": "red"}))
    assert exit_code(["train", "--config", str(path)]) == 2
    assert "colour" in capsys.readouterr().err


def test_runtime_failures_exit_1(capsys):
    port = free_port("127.0.0.1")  # nothing listens there
    assert exit_code(["push-dashboard", "--grafana-url", f"http://127.0.0.1:{port}",
                      "--timeout", "3"]) == 1
    assert exit_code(["status", "--address", f"http://127.0.0.1:{port}", "--token-file", ""]) == 1


def test_deploy_to_no_cluster_exits_1(capsys):
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "config.yaml"
    port = free_port("127.0.0.1")
    assert exit_code(["deploy", str(config), "--address", f"http://127.0.0.1:{port}",
                      "--token-file", ""]) == 1
    assert "serve deploy" in capsys.readouterr().out  # it got as far as calling serve


def test_any_exception_from_a_delegated_module_is_exit_1(capsys):
    # `json` has no main(): the AttributeError stands for any bug or crash in a module.
    assert cli_delegate.run("x", cli_delegate.Delegated("json", "no main"), []) == 1
    assert "prefillshare x: failed" in capsys.readouterr().err


def test_serve_is_up(capsys):
    args = build_parser().parse_args(["serve", "my.yaml", "--exit-when-ready"])
    assert args.config == "my.yaml" and args.exit_when_ready
    assert args.fn.__name__ == "cmd_up"


def test_bench_commands_run_from_a_checkout_only(tmp_path) -> None:
    """bench/ is not in the installed package: outside a checkout the command says so (exit 2),
    inside one it runs."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = Path(sys.executable).with_name("prefillshare")
    outside = subprocess.run([str(script), "bench", "run", "--help"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert outside.returncode == 2 and "checkout" in outside.stderr, outside.stderr
    inside = subprocess.run([str(script), "bench", "run", "--help"], cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert inside.returncode == 0 and "bench.run" in inside.stdout, inside.stderr
