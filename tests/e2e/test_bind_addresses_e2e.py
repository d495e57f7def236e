"""A real engine (tiny model, NixlConnector) listens only on the node's own address: every TCP
socket its replica process tree listens on is bound to PREFILLSHARE_HOST, none to a wildcard;
an engine whose NIXL side-channel port is taken fails its start at the deadline, not hangs.
And a Ray of our own (vllm_runtime/ray_local.py) listens on loopback only, even in a process
that imported ray before, without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER in its environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Runs in a child process: EngineHost sets the replica's environment in os.environ.
PROBE = r"""
import json, psutil
from contract.config import EngineOptions
from bench.running_app import tiny_engine, tiny_models
from vllm_runtime.engine_args import EngineSpec
from vllm_runtime.engine_host import EngineHost

base, _ = tiny_models()
opts = EngineOptions(**tiny_engine(kv_cache_space_gib=0.25))
host = EngineHost(EngineSpec(model=base, side="producer", options=opts, prefix_caching=True,
                             engine_id="bind-probe"))
me = psutil.Process()
listening = []
for proc in [me, *me.children(recursive=True)]:
    try:
        conns = proc.net_connections(kind="inet")
    except psutil.Error:
        continue
    listening += [[c.laddr.ip, c.laddr.port] for c in conns if c.status == psutil.CONN_LISTEN]
print("LISTENING " + json.dumps({"listening": listening, "side_channel": host.side_channel_port}))
host.shutdown()
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_real_engine_listens_only_on_the_node_address() -> None:
    env = {**os.environ, "PREFILLSHARE_HOST": "127.0.0.1", "VLLM_HOST_IP": "127.0.0.1",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=540)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("LISTENING ")]
    assert lines, f"probe failed ({out.returncode}):\n{out.stderr[-3000:]}"
    report = json.loads(lines[-1].removeprefix("LISTENING "))
    listening = {tuple(x) for x in report["listening"]}
    # The NIXL handshake side channel is among them, on the node address.
    assert ("127.0.0.1", report["side_channel"]) in listening, listening
    assert all(ip == "127.0.0.1" for ip, _ in listening), listening


# The side-channel port is taken when the engine binds it (as in CI, where another process
# took the port between our pick and vLLM's bind): vLLM's start would hang forever there.
TAKEN_PORT_PROBE = r"""
import json, socket, time, psutil
from contract.config import EngineOptions
from bench.running_app import tiny_engine, tiny_models
from vllm_runtime import replica_env
from vllm_runtime.engine_args import EngineSpec
from vllm_runtime.engine_host import EngineHost
from vllm_runtime.start_deadline import EngineStartTimeout

base, _ = tiny_models()
taken = socket.socket()
taken.bind(("127.0.0.1", 0))
taken.listen()
replica_env.free_port = lambda host: taken.getsockname()[1]
opts = EngineOptions(**tiny_engine(kv_cache_space_gib=0.25, start_timeout_s=90))
began = time.monotonic()
try:
    EngineHost(EngineSpec(model=base, side="producer", options=opts, prefix_caching=True,
                          engine_id="taken-port-probe"))
    outcome = "started"
except EngineStartTimeout:
    outcome = "start timeout"
time.sleep(1)
left = [p.pid for p in psutil.Process().children(recursive=True) if p.is_running()
        and p.status() != psutil.STATUS_ZOMBIE]
print("RESULT " + json.dumps({"outcome": outcome, "after_s": time.monotonic() - began,
                              "children_left": left}))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_engine_whose_side_channel_port_is_taken_fails_start_instead_of_hanging() -> None:
    env = {**os.environ, "PREFILLSHARE_HOST": "127.0.0.1", "VLLM_HOST_IP": "127.0.0.1",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", TAKEN_PORT_PROBE], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=540)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"probe failed ({out.returncode}):\n{out.stderr[-3000:]}"
    report = json.loads(lines[-1].removeprefix("RESULT "))
    assert report["outcome"] == "start timeout", report
    assert 90 <= report["after_s"] < 200, report
    assert report["children_left"] == [], report  # vLLM's processes were all stopped
    # It was the hang this guards against: vLLM's listener thread died on the bind.
    assert "Address already in use" in out.stderr + out.stdout


RAY_PROBE = r"""
import json, psutil, ray  # ray first: it reads its loopback switch at import
from vllm_runtime.ray_local import init_local_ray

init_local_ray()
gcs = ray.get_runtime_context().gcs_address
listening = []
for proc in psutil.Process().children(recursive=True):
    try:
        conns = proc.net_connections(kind="inet")
    except psutil.Error:
        continue
    listening += [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN]
print("LISTENING " + json.dumps({"gcs": gcs, "listening": listening}))
ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_our_own_ray_listens_only_on_loopback() -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "VLLM_HOST_IP", "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", RAY_PROBE], cwd=ROOT,
                         env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=240)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("LISTENING ")]
    assert lines, f"probe failed ({out.returncode}):\n{out.stderr[-3000:]}"
    report = json.loads(lines[-1].removeprefix("LISTENING "))
    assert report["gcs"].startswith("127.0.0.1:"), report
    assert report["listening"], report  # GCS, raylet, agents
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in report["listening"]), report
