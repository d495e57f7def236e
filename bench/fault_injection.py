"""Fault injection for the fault run and its tests: a DecodeServer whose next KV pulls fail.

Test-only: the product's app builder takes this class only when a harness passes it
(bench/running_app.py ``decode_server=``); nothing in the product imports it.
"""

from __future__ import annotations

import uuid
from typing import Any

from contract.wire import DecodeRequest, ReplicaProbe
from decode_service.server import DecodeServer
from vllm_runtime.replica_env import free_port


class FaultInjectingDecodeServer(DecodeServer):
    """The next ``count`` requests of a replica pull their KV from an address where no prefill
    engine listens, so vLLM's real failure path runs (NIXL handshake fails; policy fail: error,
    recompute: local prefill). The real prefill blocks stay leased until the ingress's release
    or the lease expiry, as after any real failed pull."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kv_pull_faults_armed = 0

    async def fail_next_kv_pulls(self, count: int = 1,
                                 probe: ReplicaProbe = ReplicaProbe()) -> str:
        """``probe`` pins the call to one replica (the request router reads it). Returns the
        engine id of the replica that armed the faults."""
        self.kv_pull_faults_armed += count
        return self.engine.spec.engine_id

    def kv_source(self, request: DecodeRequest) -> dict[str, Any] | None:
        params = request.kv_transfer_params
        if params and self.kv_pull_faults_armed > 0:
            self.kv_pull_faults_armed -= 1
            return unreachable_kv_source(params)
        return params


def unreachable_kv_source(params: dict[str, Any]) -> dict[str, Any]:
    """The same transfer, pointed at a prefill engine that does not exist (a closed port on
    the same host): the pull fails at the NIXL handshake."""
    host = str(params.get("remote_host") or "127.0.0.1")
    return {**params, "remote_engine_id": f"fault-injected-{uuid.uuid4().hex[:8]}",
            "remote_port": free_port(host)}
