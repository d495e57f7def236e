"""The health probes in the committed RayService answer on a real Ray 2.60 head started with the
rendered head's rayStartParams (ports moved to free ones: the box is shared). No engines."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from vllm_runtime.replica_env import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_rendered_probe_endpoints_answer_on_a_ray_head():
    rs = yaml.safe_load((ROOT / "k8s" / "rayservice.yaml").read_text())
    cluster = rs["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container = head["template"]["spec"]["containers"][0]
    params = dict(head["rayStartParams"])
    # Local stand-ins for the pod's fixed ports.
    ports = {8265: free_port("127.0.0.1"), int(params["dashboard-agent-listen-port"]): free_port("127.0.0.1")}
    params.update({"dashboard-host": "127.0.0.1", "dashboard-port": str(ports[8265]),
                   "dashboard-agent-listen-port": str(ports[int(params["dashboard-agent-listen-port"])]),
                   "port": str(free_port("127.0.0.1"))})
    temp = tempfile.mkdtemp(prefix="psp-", dir="/tmp")  # AF_UNIX paths stop at 107 bytes
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
           "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--include-dashboard=true",
           "--disable-usage-stats", *(f"--{k}={v}" for k, v in params.items())]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_AUTH_MODE", None)  # the rendered cluster runs without Ray token auth
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    try:
        probes = [container["readinessProbe"], container["livenessProbe"],
                  worker["readinessProbe"], worker["livenessProbe"]]
        for probe in probes:
            get = probe["httpGet"]
            url = f"http://127.0.0.1:{ports[get['port']]}{get['path']}"
            deadline, status = time.monotonic() + 180, None
            while time.monotonic() < deadline and status != 200:
                assert proc.poll() is None, "ray start exited"
                try:
                    status = httpx.get(url, timeout=probe["timeoutSeconds"]).status_code
                except httpx.HTTPError:
                    time.sleep(1)
            assert status == 200, url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp, ignore_errors=True)
