"""A local Ray head on 127.0.0.1 that this process starts and, on exit, stops by PID.

Runs in the CLI process. `ray start --block` keeps the head in the foreground of a child
process of ours, in its own process group, so stopping it ends exactly the Ray processes we
started (never `ray stop`, which would end every Ray cluster on the box).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"


@dataclass
class LocalRayHead:
    gcs_port: int = 6390
    dashboard_port: int = 8265
    metrics_export_port: int | None = None  # Ray's Prometheus exporter on this node
    num_cpus: int | None = None
    temp_dir: Path = Path("/tmp/prefillshare-ray")
    proc: subprocess.Popen[bytes] | None = None
    token_path: Path | None = None

    def auth_headers(self) -> dict[str, str]:
        if self.token_path is None:
            return {}
        return {"Authorization": f"Bearer {self.token_path.read_text().strip()}"}

    def env(self) -> dict[str, str]:
        """Environment for processes that talk to this cluster (ray, serve CLIs)."""
        env = loopback_env()
        if self.token_path is not None:
            env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)})
        return env

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.gcs_port}"

    def start(self, log_path: Path, timeout_s: float = 120) -> None:
        for port in (self.gcs_port, self.dashboard_port, self.metrics_export_port):
            if port is not None and port_in_use(port):
                raise RuntimeError(f"port {port} on {LOOPBACK} is in use: is another cluster running?")
        ray = Path(sys.executable).with_name("ray")
        cmd = [str(ray), "start", "--head", "--block", f"--node-ip-address={LOOPBACK}",
               f"--port={self.gcs_port}", f"--dashboard-host={LOOPBACK}",
               f"--dashboard-port={self.dashboard_port}", f"--temp-dir={self.temp_dir}",
               "--include-dashboard=true", "--disable-usage-stats"]
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        if self.metrics_export_port is not None:
            cmd.append(f"--metrics-export-port={self.metrics_export_port}")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Ray's token auth stays on, with a token of this run's own (never ~/.ray's).
        self.token_path = log_path.parent / "ray_auth_token"
        self.token_path.touch(mode=0o600)
        self.token_path.write_text(secrets.token_hex(32))
        log = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     env=self.env(), start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}; see {log_path}")
            if dashboard_ready(self.dashboard_url, self.auth_headers()):
                return
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"the Ray dashboard did not come up in {timeout_s:.0f}s; see {log_path}")

    def stop(self, grace_s: float = 30) -> None:
        """SIGTERM to our head's process group, then SIGKILL whatever is left of it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def loopback_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": LOOPBACK,
                "PREFILLSHARE_HOST": LOOPBACK})
    return env


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((host, port)) == 0


def dashboard_ready(url: str, headers: dict[str, str]) -> bool:
    try:
        return httpx.get(f"{url}/api/version", headers=headers, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
