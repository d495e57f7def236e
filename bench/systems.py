"""Starting one benchmarked system and reading what it costs in memory.

A system is either a PrefillShare app (baseline, prefillshare, prefillshare-lora: Ray Serve,
bench/running_app.py) or vLLM's own server with the role adapters (vllm-lora:
bench/vllm_server.py). Both yield the URL the driver talks to, the /stats URL (None when the
system has none) and a function that measures the system's memory right now.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VLLM_LORA = "vllm-lora"


@dataclass(frozen=True)
class RunningSystem:
    url: str
    stats_url: str | None
    memory: Callable[[], dict[str, float]]  # {"rss_gib": all its processes, "processes": n}


def process_tree_rss_gib(pid: int) -> dict[str, float]:
    """RSS of a process and all its children (a vLLM server: API server, engine core,
    workers)."""
    import psutil

    root = psutil.Process(pid)
    total, count = 0, 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
            count += 1
    return {"rss_gib": total / (1 << 30), "processes": float(count)}


def ray_app_rss_gib() -> dict[str, float]:
    """RSS of every Serve replica of the benchmark app with its children (engines, ingress)."""
    from bench import replicas as rep
    from bench.running_app import APP

    trees = rep.replica_memory(rep.live_replicas(APP))
    return {"rss_gib": sum(t["rss_mib"] for t in trees.values()) / 1024,
            "processes": float(len(trees))}


@contextlib.contextmanager
def running_system(kind: str, args: dict[str, Any], *, log_dir: Path) -> Iterator[RunningSystem]:
    """``args``: the app args (bench/topologies.py), or for vllm-lora {"model", "adapters",
    "engine"}."""
    if kind == VLLM_LORA:
        from bench.vllm_server import running_vllm_server

        with running_vllm_server(args["model"], args["adapters"], args["engine"],
                                 log_path=log_dir / "vllm_serve.log") as (url, pid):
            yield RunningSystem(url, None, lambda: process_tree_rss_gib(pid))
        return
    from bench.running_app import running_app

    with running_app(args) as app:
        yield RunningSystem(app.url, f"{app.url}/stats", ray_app_rss_gib)
