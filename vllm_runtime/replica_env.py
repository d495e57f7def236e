"""Environment a Serve replica sets before it starts its vLLM engine.

Every engine on a host needs its own NIXL side-channel port (vLLM's default 5600 collides),
and on CPU its own KV space and thread binding; all traffic stays on the node's own address
(127.0.0.1 on a dev box). vLLM reads these from os.environ when the engine starts, and its
EngineCore subprocess inherits them, so they are set in the replica process itself.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaNetwork:
    host: str
    side_channel_port: int


# Ports handed out for a server to bind later come from below the kernel's ephemeral range
# and above Ray's worker ports (10002-19999): a port from the ephemeral range, free when
# picked, is often taken by then by an outgoing connection or another bind(0) (UCX, gloo,
# Ray), and a vLLM engine whose NIXL side channel cannot bind hangs in start forever.
LISTEN_PORTS_FROM = 20000
_FALLBACK_EPHEMERAL_LOW = 32768
_handed_out: set[int] = set()


def ephemeral_port_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_LOW


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    """A port free on ``host`` now, for a server that binds it later: drawn at random from
    outside the ephemeral range (see LISTEN_PORTS_FROM) and never the same twice in this
    process; the OS's own pick only where that range is empty or full."""
    low, high = LISTEN_PORTS_FROM, ephemeral_port_low()
    rng = random.SystemRandom()
    for _ in range(64 if high > low else 0):
        port = rng.randrange(low, high)
        if port not in _handed_out and _bindable(host, port):
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# The NIXL side channel and UCX carry KV unauthenticated (docs/security.md): bound to a
# wildcard address they would be reachable from every network the node is on.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", "*", "0", "::0"})


def node_host() -> str:
    """The address engines bind to: PREFILLSHARE_HOST, else VLLM_HOST_IP, else loopback;
    never a wildcard address."""
    host = (os.environ.get("PREFILLSHARE_HOST") or os.environ.get("VLLM_HOST_IP")
            or "127.0.0.1").strip()
    if host in WILDCARD_HOSTS:
        raise ValueError(f"engines bind to the node's own address, not the wildcard {host!r}: "
                         "set PREFILLSHARE_HOST (or VLLM_HOST_IP) to the node or pod IP")
    return host


def engine_environment(
    *,
    host: str,
    side_channel_port: int,
    cpu_threads_bind: str,
    on_cpu: bool,
) -> dict[str, str]:
    if host.strip() in WILDCARD_HOSTS:
        raise ValueError(f"refusing to bind engines to the wildcard address {host!r}")
    env = {
        "VLLM_HOST_IP": host,
        "VLLM_NIXL_SIDE_CHANNEL_HOST": host,
        "VLLM_NIXL_SIDE_CHANNEL_PORT": str(side_channel_port),
        # vLLM picks spawn itself inside Ray actors; being explicit avoids fork-after-threads.
        "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    }
    if on_cpu:
        env.update(
            {
                "VLLM_CPU_OMP_THREADS_BIND": cpu_threads_bind,
                # UCX on one host: tcp over lo plus shared memory; "self,sm" alone fails.
                "UCX_TLS": os.environ.get("UCX_TLS", "tcp,sm,self"),
                "UCX_NET_DEVICES": os.environ.get("UCX_NET_DEVICES", "lo"),
            }
        )
    return env


def cpu_bind_for(replica_index: int, threads: int, num_cores: int | None = None) -> str:
    """Spreads engines over the cores round-robin: engine i gets cores starting at i*threads."""
    cores = num_cores or os.cpu_count() or 1
    threads = min(threads, cores)
    start = (replica_index * threads) % cores
    picked = [(start + k) % cores for k in range(threads)]
    return ",".join(str(c) for c in picked)


def apply(env: dict[str, str]) -> None:
    os.environ.update(env)
    # vLLM's CPU platform lets this legacy whole-GiB variable override kv_cache_memory_bytes
    # (the engine's own, exact setting): an inherited one must not resize the KV cache.
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


def on_cpu_platform() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True
