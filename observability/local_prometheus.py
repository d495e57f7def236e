"""A Prometheus server of our own on 127.0.0.1 that scrapes Ray's metrics exporters: for the
slow dashboard test and for watching a local run. Runs in the caller's process tree (its own
process group, stopped by PID).

The binary is Debian's ``prometheus`` package: scripts/install.sh installs it when absent (apt
as root, else the .deb unpacked into the venv); PREFILLSHARE_PROMETHEUS names another one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

LOOPBACK = "127.0.0.1"


def prometheus_binary() -> str | None:
    unpacked = Path(sys.prefix) / "prometheus/usr/bin/prometheus"  # install.sh without root
    return (os.environ.get("PREFILLSHARE_PROMETHEUS") or shutil.which("prometheus")
            or (str(unpacked) if unpacked.is_file() else None))


def scrape_config(targets: list[str], interval_s: float = 5) -> dict[str, Any]:
    """One job over Ray's per-node metrics exporters ("host:port"; the port is each node's
    metrics_export_port, ``ray start --metrics-export-port``)."""
    return {
        "global": {"scrape_interval": f"{interval_s:g}s", "evaluation_interval": f"{interval_s:g}s"},
        "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": targets}]}],
    }


def ray_metrics_targets() -> list[str]:
    """host:port of every live node's metrics exporter in the Ray cluster we are connected to."""
    import ray

    return [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes()
            if n.get("Alive") and n.get("MetricsExportPort", -1) > 0]


@dataclass
class LocalPrometheus:
    targets: list[str]
    port: int
    interval_s: float = 2
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ps-prometheus-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout_s: float = 60) -> None:
        binary = prometheus_binary()
        if binary is None:
            raise RuntimeError("no `prometheus` binary: run scripts/install.sh (installs Debian's "
                               "prometheus package) or set PREFILLSHARE_PROMETHEUS")
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(self.targets, self.interval_s)))
        log = open(self.workdir / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--web.listen-address={LOOPBACK}:{self.port}",
             f"--storage.tsdb.path={self.workdir / 'data'}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}; see "
                                   f"{self.workdir / 'prometheus.log'}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"prometheus was not ready in {timeout_s:.0f}s")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar) an expression gives now."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        if body.get("status") != "success":
            raise ValueError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
        return list(body["data"]["result"])

    def target_health(self) -> list[str]:
        r = httpx.get(f"{self.url}/api/v1/targets", timeout=10)
        return [t["health"] for t in r.json()["data"]["activeTargets"]]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> LocalPrometheus:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
