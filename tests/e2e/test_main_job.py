"""The main job's path for real: `prefillshare up` starts its own Ray head on 127.0.0.1,
runs `serve deploy` on a config file, waits for RUNNING, prints the endpoints and, on exit,
stops exactly the processes it started."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from bench.running_app import tiny_engine, tiny_models
from vllm_runtime.replica_env import free_port

pytestmark = pytest.mark.slow


def test_up_deploys_config_prints_endpoints_and_cleans_up(tmp_path: Path):
    base, decoder = tiny_models()
    http_port = free_port("127.0.0.1")
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": [{
            "name": "prefillshare", "route_prefix": "/",
            "import_path": "deployments.app:build_app",
            "args": {"base_model": base,
                     "prefill_pools": {"shared": {"engine": tiny_engine()}},
                     "roles": [{"name": "planner", "decoder": decoder,
                                "decode_pool": {"engine": tiny_engine()}}]},
        }],
    }
    # Ray's socket paths live under the temp dir and AF_UNIX paths stop at 107 bytes.
    ray_dir = Path(tempfile.mkdtemp(prefix="psj-", dir="/tmp"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "deployments", "up", str(path), "--exit-when-ready",
           "--ray-port", str(free_port("127.0.0.1")),
           "--dashboard-port", str(free_port("127.0.0.1")),
           "--ray-temp-dir", str(ray_dir), "--run-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "VLLM_HOST_IP": "127.0.0.1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"http://127.0.0.1:{http_port}/v1/chat/completions" in proc.stdout
    assert "/roles/planner/v1/chat/completions" in proc.stdout
    assert "stopped." in proc.stdout
    # Nothing of that cluster is left: no process still uses its temp dir, the port is free.
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if str(ray_dir) in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, [p.info["cmdline"][:3] for p in leftovers]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{http_port}/v1/models", timeout=2)


def test_validate_refuses_a_bad_config_naming_the_field(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"applications": [{
        "name": "prefillshare", "import_path": "deployments.app:build_app",
        "args": {"roles": [{"name": "planner", "prefill_pool": "missing"}]}}]}))
    proc = subprocess.run([sys.executable, "-m", "deployments", "validate", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "roles.planner.prefill_pool" in proc.stderr
