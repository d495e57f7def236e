"""DecodeServer: one vLLM engine with a role's decoder, a NIXL KV consumer.

Runs in a Serve replica process. A request arrives with the kv_transfer_params the prefill
pool returned; vLLM pulls the base model's KV for the prompt over NIXL, re-runs the last
prompt token with the decoder's own weights (the KV boundary of design.md) and streams tokens.
One server may host several roles as LoRA adapters over the base weights.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

from router_service.backend import BackendError, GenerationDelta, SamplingSpec, TokenLogprob
from router_service.pd_backend import KV_LOADED_STAT, KV_PULL_FAILED
from vllm_runtime.engine_args import EngineSpec
from vllm_runtime.engine_server import EngineServer
from vllm_runtime.kv_pull_probe import EXTENSION as KV_PULL_EXTENSION
from vllm_runtime.kv_pull_probe import KvPullWatcher

# Sent once the request's KV is in this engine, before its first token (router's timeouts).
KV_LOADED = GenerationDelta(text="", token_ids=(), stats={KV_LOADED_STAT: 1.0})


def sampling_params(spec: SamplingSpec, kv_transfer_params: dict[str, Any] | None) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    extra = {"kv_transfer_params": kv_transfer_params} if kv_transfer_params else None
    return SamplingParams(
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        seed=spec.seed,
        stop=list(spec.stop) or None,
        logprobs=spec.logprobs,
        ignore_eos=spec.ignore_eos,
        output_kind=RequestOutputKind.DELTA,
        extra_args=extra,
    )


def to_delta(out: Any) -> GenerationDelta:
    """A vLLM RequestOutput in DELTA mode -> the API's GenerationDelta."""
    completion = out.outputs[0]
    logprobs = None
    if completion.logprobs is not None:
        items = []
        for token_id, alternatives in zip(completion.token_ids, completion.logprobs):
            chosen = alternatives[token_id]
            top = tuple(
                (lp.decoded_token or "", float(lp.logprob))
                for _, lp in sorted(alternatives.items(), key=lambda kv: kv[1].rank or 0)
            )
            items.append(TokenLogprob(token_id, chosen.decoded_token or "", float(chosen.logprob), top))
        logprobs = tuple(items)
    return GenerationDelta(
        text=completion.text,
        token_ids=tuple(completion.token_ids),
        logprobs=logprobs,
        finish_reason=completion.finish_reason if out.finished else None,
        num_cached_prompt_tokens=out.num_cached_tokens if out.finished else None,
    )


class DecodeServer(EngineServer):
    kind = "decode"

    def __init__(self, spec: EngineSpec, pool: str, core_offset: int = 0,
                 lora_adapters: dict[str, str] | None = None) -> None:
        # The worker extension lists in-flight KV pulls (vllm_runtime/kv_pull_probe.py).
        options = spec.options.model_copy(
            update={"extra": {"worker_extension_cls": KV_PULL_EXTENSION, **spec.options.extra}})
        super().__init__(dataclasses.replace(spec, options=options), pool, core_offset)
        self.kv_pulls = KvPullWatcher(self.engine.engine)
        self.lora_requests = self._lora_requests(lora_adapters or {})
        self.kv_pull_faults_armed = 0  # fault injection (bench/fault_run.py); 0 in service

    @staticmethod
    def _lora_requests(adapters: dict[str, str]) -> dict[str, Any]:
        if not adapters:
            return {}
        from vllm.lora.request import LoRARequest

        return {name: LoRARequest(name, i + 1, path)
                for i, (name, path) in enumerate(sorted(adapters.items()))}

    async def generate(self, request_id: str, prompt_token_ids: list[int], sampling: SamplingSpec,
                       kv_transfer_params: dict[str, Any] | None,
                       lora_name: str | None = None,
                       block_hashes: list[int] | None = None) -> AsyncIterator[GenerationDelta]:
        """``block_hashes`` is read by the request router (reuse mode), not here."""
        lora = None
        if lora_name is not None:
            if lora_name not in self.lora_requests:
                raise BackendError(f"adapter {lora_name!r} is not served here", 500, retryable=False)
            lora = self.lora_requests[lora_name]
        if kv_transfer_params and self.kv_pull_faults_armed > 0:
            self.kv_pull_faults_armed -= 1
            kv_transfer_params = unreachable_kv_source(kv_transfer_params)
        params = sampling_params(sampling, kv_transfer_params)
        self.inflight += 1
        outputs = self.engine.generate(prompt_token_ids, params, request_id, lora)
        try:
            if kv_transfer_params:
                # Until the first output: tell the router when the KV pull is over.
                first = None
                async for item in self._until_first_output(request_id, outputs):
                    if item is KV_LOADED:
                        yield KV_LOADED
                    else:
                        first = item
                if first is None:
                    return
                yield _checked(to_delta(first))
            async for out in outputs:
                yield _checked(to_delta(out))
        finally:
            await outputs.aclose()
            self.inflight -= 1

    async def _until_first_output(self, request_id: str,
                                  outputs: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yields KV_LOADED if the KV pull ends before the first output, then that output
        (nothing if the stream ends without one)."""
        loaded = self.kv_pulls.watch(request_id)
        first = asyncio.ensure_future(anext(outputs, None))
        waiter = asyncio.ensure_future(loaded.wait())
        try:
            done, _ = await asyncio.wait({first, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if first not in done:
                yield KV_LOADED
            out = await first
        finally:
            self.kv_pulls.forget(request_id)
            waiter.cancel()
            if not first.done():  # our consumer left: cancelling aborts the engine request
                first.cancel()
                with contextlib.suppress(BaseException):
                    await first
        if out is not None:
            yield out

    async def fail_next_kv_pulls(self, count: int = 1, target_replica: str | None = None) -> str:
        """Fault injection: the next ``count`` requests of this replica pull their KV from an
        address where no prefill engine listens, so vLLM's real failure path runs (NIXL
        handshake fails; policy fail: error, recompute: local prefill). The real prefill
        blocks stay leased until the router's release or the lease expiry, as after any real
        failed pull. ``target_replica`` is read by the request router. Returns the engine id."""
        self.kv_pull_faults_armed += count
        return self.engine.spec.engine_id

    async def release(self, request_id: str, kv_transfer_params: dict[str, Any]) -> None:
        """Frees the prefill engine's leased blocks for a request that will never be decoded."""
        await self.engine.engine.notify_kv_transfer_request_rejected(request_id, kv_transfer_params)


def _checked(delta: GenerationDelta) -> GenerationDelta:
    if delta.finish_reason == "error":
        # vLLM's only request-level error: the KV pull failed (policy "fail").
        raise BackendError("KV transfer from the prefill pool failed; retry", 503,
                           code=KV_PULL_FAILED)
    return delta


def unreachable_kv_source(params: dict[str, Any]) -> dict[str, Any]:
    """The same transfer, pointed at a prefill engine that does not exist (a closed port on
    the same host): the pull fails at the NIXL handshake."""
    from vllm_runtime.replica_env import free_port

    host = str(params.get("remote_host") or "127.0.0.1")
    return {**params, "remote_engine_id": f"fault-injected-{uuid.uuid4().hex[:8]}",
            "remote_port": free_port(host)}
