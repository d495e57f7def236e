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
import json
from collections.abc import AsyncIterator
from typing import Any

from contract.wire import (
    DecodeEvent,
    DecodeRequest,
    ErrorCode,
    GenerationDelta,
    KvLoaded,
    ReleaseRequest,
    SamplingSpec,
    ServingError,
    TokenLogprob,
)
from decode_service.lora_requests import LoraRequests
from vllm_runtime.admission import AdmissionLimits
from vllm_runtime.engine_args import EngineSpec
from vllm_runtime.engine_server import EngineServer
from vllm_runtime.kv_pull_probe import EXTENSION as KV_PULL_EXTENSION
from vllm_runtime.kv_pull_probe import KvPullWatcher
from vllm_runtime.kv_resume import resumed_kv_params

KV_LOADED = KvLoaded()


def sampling_params(spec: SamplingSpec, kv_transfer_params: dict[str, Any] | None) -> Any:
    """The wire's SamplingSpec as vLLM SamplingParams, streaming deltas."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    extra = {"kv_transfer_params": kv_transfer_params} if kv_transfer_params else None
    structured = None
    if spec.structured_output is not None:
        so = spec.structured_output
        structured = StructuredOutputsParams(
            json=json.loads(so.json) if so.json is not None else None,
            json_object=so.json_object or None, structural_tag=so.structural_tag)
    return SamplingParams(
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        seed=spec.seed,
        stop=list(spec.stop) or None,
        stop_token_ids=list(spec.stop_token_ids) or None,
        logprobs=spec.logprobs,
        ignore_eos=spec.ignore_eos,
        min_tokens=spec.min_tokens,
        presence_penalty=spec.presence_penalty,
        frequency_penalty=spec.frequency_penalty,
        repetition_penalty=spec.repetition_penalty,
        logit_bias=dict(spec.logit_bias) or None,
        structured_outputs=structured,
        output_kind=RequestOutputKind.DELTA,
        extra_args=extra,
    )


def to_delta(out: Any) -> GenerationDelta:
    """A vLLM RequestOutput in DELTA mode -> the wire's GenerationDelta."""
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
                 lora_adapters: dict[str, str] | None = None,
                 admission: AdmissionLimits = AdmissionLimits()) -> None:
        # The worker extension lists in-flight KV pulls (vllm_runtime/kv_pull_probe.py).
        options = spec.options.model_copy(
            update={"extra": {"worker_extension_cls": KV_PULL_EXTENSION, **spec.options.extra}})
        super().__init__(dataclasses.replace(spec, options=options), pool, core_offset, admission)
        self.kv_pulls = KvPullWatcher(self.engine.engine)
        self.lora_requests = LoraRequests(lora_adapters or {})

    async def generate(self, request: DecodeRequest) -> AsyncIterator[DecodeEvent]:
        lora = None
        if request.lora_name is not None:
            lora = self.lora_requests.get(request.lora_name, request.lora_path)
            if lora is None:
                raise ServingError(f"adapter {request.lora_name!r} is not served here", 500,
                                   code=ErrorCode.ADAPTER_NOT_SERVED, retryable=False)
        self.admit()
        kv_params = self.kv_source(request)
        if kv_params and request.prefilled_tokens is not None:
            kv_params = resumed_kv_params(kv_params, request.prefilled_tokens,
                                          self.engine.spec.options.block_size)
        params = sampling_params(request.sampling, kv_params)
        rid = request.request_id
        self.inflight += 1
        outputs = self.engine.generate(list(request.prompt_token_ids), params, rid, lora)
        try:
            if kv_params:
                # Until the first output: tell the ingress when the KV pull is over.
                first = None
                async for item in self._until_first_output(rid, outputs):
                    if item is KV_LOADED:
                        yield KV_LOADED
                    else:
                        first = item
                if first is None:
                    return
                yield _checked(to_delta(first))
            async for out in outputs:
                yield _checked(to_delta(out))
        except ValueError as exc:
            # vLLM validates sampling (a grammar it cannot compile, ids outside the vocab) as
            # the request enters the engine: the client's input, not a replica failure.
            raise ServingError(f"The decode engine refused the request: {exc}", 400,
                               code=ErrorCode.SAMPLING_REFUSED, retryable=False) from None
        except Exception as exc:
            if _is_engine_dead(exc):
                # The engine process died under this replica (OOM killer, a crash): for the
                # ingress a lost replica, and a stream it had started moves to another one.
                raise ServingError("the decode engine of this replica died", 503,
                                   code=ErrorCode.REPLICA_LOST) from None
            raise
        finally:
            await outputs.aclose()
            self.inflight -= 1

    def kv_source(self, request: DecodeRequest) -> dict[str, Any] | None:
        """Where this request's prompt KV is pulled from (a seam for fault injection)."""
        return request.kv_transfer_params

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

    async def release(self, request: ReleaseRequest) -> None:
        """Frees the prefill engine's leased blocks for a request that will never be decoded."""
        await self.engine.engine.notify_kv_transfer_request_rejected(request.request_id,
                                                                    request.kv_transfer_params)


def _is_engine_dead(exc: BaseException) -> bool:
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(exc, EngineDeadError)


def _checked(delta: GenerationDelta) -> GenerationDelta:
    if delta.finish_reason == "error":
        # vLLM's only request-level error: the KV pull failed (policy "fail").
        raise ServingError("KV transfer from the prefill pool failed; retry", 503,
                           code=ErrorCode.KV_PULL_FAILED)
    return delta

