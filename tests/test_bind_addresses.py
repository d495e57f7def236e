"""Engines, NIXL side channels and every server we start bind to the node's own address, never
a wildcard one (docs/security.md: KV traffic is unauthenticated)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from contract.config import EngineOptions
from vllm_runtime import replica_env
from vllm_runtime.engine_args import EngineSpec, engine_kwargs

ROOT = Path(__file__).resolve().parents[1]


def replica_environment(host: str) -> dict[str, str]:
    """engine_environment with whatever sizing arguments its current signature takes."""
    wanted = inspect.signature(replica_env.engine_environment).parameters
    kwargs: dict[str, Any] = {"host": host, "side_channel_port": 5601, "cpu_threads_bind": "0",
                              "on_cpu": True, "kv_cache_space_gib": 1.0}
    return replica_env.engine_environment(**{k: v for k, v in kwargs.items() if k in wanted})


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", " 0.0.0.0 ", "[::]"])
@pytest.mark.parametrize("var", ["PREFILLSHARE_HOST", "VLLM_HOST_IP"])
def test_a_wildcard_node_address_is_refused(monkeypatch: pytest.MonkeyPatch, var: str,
                                            wildcard: str) -> None:
    monkeypatch.delenv("PREFILLSHARE_HOST", raising=False)
    monkeypatch.delenv("VLLM_HOST_IP", raising=False)
    monkeypatch.setenv(var, wildcard)
    with pytest.raises(ValueError, match="wildcard"):
        replica_env.node_host()
    with pytest.raises(ValueError, match="wildcard"):
        replica_environment(wildcard)


@pytest.mark.parametrize("host", ["127.0.0.1", "10.4.2.17", "fd00::12"])
def test_the_replica_environment_binds_everything_to_the_node_address(
        monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.delenv("VLLM_HOST_IP", raising=False)
    monkeypatch.delenv("UCX_NET_DEVICES", raising=False)
    monkeypatch.setenv("PREFILLSHARE_HOST", host)
    env = replica_environment(replica_env.node_host())
    assert env["VLLM_HOST_IP"] == env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == host
    # On CPU, UCX moves KV over loopback only unless the operator says otherwise.
    assert env["UCX_NET_DEVICES"] == "lo"


def test_engine_args_name_no_host_and_no_wildcard() -> None:
    spec = EngineSpec(model="m", side="producer", options=EngineOptions(), prefix_caching=True,
                      engine_id="e")
    text = repr(engine_kwargs(spec, on_cpu=True))
    assert "0.0.0.0" not in text and "'::'" not in text
    assert not {"host", "port"} & set(engine_kwargs(spec, on_cpu=True))


_WILDCARD_LITERAL = re.compile(r"""["'](0\.0\.0\.0|::|\[::\])["']""")
# Inside a Kubernetes pod, 0.0.0.0 is the pod's own network namespace (its pod IP and lo); the
# manifests bind the Serve HTTP proxy there on purpose. Everything else is ours to keep local.
_POD_ONLY = ("deployments/k8s/",)


def test_no_server_we_start_binds_a_wildcard_address() -> None:
    offenders = []
    for folder in ("vllm_runtime", "prefill_service", "decode_service", "router_service",
                   "deployments", "bench", "scripts"):
        for path in sorted((ROOT / folder).rglob("*")):
            rel = path.relative_to(ROOT).as_posix()
            if path.suffix not in {".py", ".sh", ".yaml"} or rel.startswith(_POD_ONLY):
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if _WILDCARD_LITERAL.search(line) and "WILDCARD_HOSTS" not in line:
                    offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == []
    config = (ROOT / "config.yaml").read_text()
    assert "host: 127.0.0.1" in config and "0.0.0.0" not in config
