"""One vLLM AsyncLLM inside one Serve replica: start, generate, abort, report.

Runs in the replica process. The prefill and decode servers each own an ``EngineHost``; the
host sets the replica's environment (ports, KV space, loopback-only networking) before vLLM
reads it, and counts what the engine does.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from vllm_runtime import replica_env
from vllm_runtime.engine_args import EngineSpec, engine_kwargs
from vllm_runtime.engine_metrics import vllm_stat_loggers
from vllm_runtime.engine_stats import EngineCounters, stat_logger_factory
from vllm_runtime.start_deadline import start_deadline

log = logging.getLogger(__name__)


class EngineHost:
    def __init__(self, spec: EngineSpec, *, core_index: int = 0,
                 on_stats: Callable[[EngineCounters], None] | None = None) -> None:
        started = time.perf_counter()
        self.spec = spec
        self.on_cpu = replica_env.on_cpu_platform()
        self.host = replica_env.node_host()
        self.side_channel_port = replica_env.free_port(self.host)
        replica_env.apply(
            replica_env.engine_environment(
                host=self.host,
                side_channel_port=self.side_channel_port,
                cpu_threads_bind=replica_env.cpu_bind_for(core_index, spec.options.cpu_threads),
                on_cpu=self.on_cpu,
            )
        )
        from vllm.config import KVTransferConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        kwargs = engine_kwargs(spec, on_cpu=self.on_cpu)
        kwargs["kv_transfer_config"] = KVTransferConfig(**kwargs["kv_transfer_config"])
        self.counters = EngineCounters()
        with start_deadline(spec.options.start_timeout_s, f"engine {spec.engine_id}"):
            self.engine = AsyncLLM.from_engine_args(
                AsyncEngineArgs(**kwargs),
                stat_loggers=[stat_logger_factory(self.counters, on_stats), *vllm_stat_loggers()],
            )
        self.start_s = time.perf_counter() - started
        self.requests_started = 0
        self.requests_finished = 0
        self.requests_aborted = 0
        log.info(
            "engine %s (%s, %s) ready in %.1fs, NIXL side channel %s:%d",
            spec.engine_id, spec.side, spec.model, self.start_s, self.host, self.side_channel_port,
        )

    async def generate(
        self,
        prompt_token_ids: list[int],
        sampling_params: Any,
        request_id: str | None = None,
        lora_request: Any = None,
    ) -> AsyncIterator[Any]:
        """Yields vLLM RequestOutputs; closing the iterator early aborts the request."""
        from vllm.inputs import TokensPrompt

        rid = request_id or uuid.uuid4().hex
        self.requests_started += 1
        finished = False
        try:
            async for out in self.engine.generate(
                TokensPrompt(prompt_token_ids=list(prompt_token_ids)),
                sampling_params,
                rid,
                lora_request=lora_request,
            ):
                finished = out.finished
                yield out
        finally:
            if finished:
                self.requests_finished += 1
            else:
                # The caller went away (client disconnect, timeout): free the engine's blocks.
                self.requests_aborted += 1
                await self.engine.abort(rid)

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    async def all_blocks_free(self) -> bool:
        """Leak probe: True when no KV block is held by any request or lease.

        vLLM resets its prefix cache only when every block is free, so the reset doubles as
        the check. It drops the prefix cache: use it in tests and fault runs, not in service.
        """
        return bool(await self.engine.reset_prefix_cache())

    def report(self) -> dict[str, Any]:
        return {
            "rss_mib": process_tree_rss_mib(),
            "engine_id": self.spec.engine_id,
            "side": self.spec.side,
            "model": self.spec.model,
            "pid": os.getpid(),
            "start_s": self.start_s,
            "requests_started": self.requests_started,
            "requests_finished": self.requests_finished,
            "requests_aborted": self.requests_aborted,
            **self.counters.snapshot(),
        }

    def shutdown(self) -> None:
        self.engine.shutdown()


def process_tree_rss_mib() -> float:
    """This replica's memory: its own RSS plus vLLM's EngineCore and worker processes."""
    return sum(process_tree_rss_parts().values())


def process_tree_rss_parts() -> dict[str, float]:
    """RSS in MiB of this replica process and its children by kind: ``replica`` (this
    process: Serve, the AsyncLLM front), ``engine_core`` (vLLM's scheduler process),
    ``worker`` (the model runner: weights, KV cache) and ``other``. Telling them apart is what
    says whose memory grows in a soak. vLLM names its processes VLLM::EngineCore and
    VLLM::Worker (the kernel truncates names to 15 characters)."""
    import psutil

    me = psutil.Process()
    parts = {"replica": me.memory_info().rss / (1 << 20), "engine_core": 0.0, "worker": 0.0,
             "other": 0.0}
    for child in me.children(recursive=True):
        try:
            name, rss = child.name(), child.memory_info().rss / (1 << 20)
        except psutil.Error:  # exited between the listing and the read
            continue
        kind = "engine_core" if "EngineCor" in name else "worker" if "Worker" in name else "other"
        parts[kind] += rss
    return parts
