"""DecodeServer: one vLLM engine with a role's decoder, a NIXL KV consumer.

Runs in a Serve replica process. A request arrives with the kv_transfer_params the prefill
pool returned; vLLM pulls the base model's KV for the prompt over NIXL, re-runs the last
prompt token with the decoder's own weights (the KV boundary of design.md) and streams tokens.
One server may host several roles as LoRA adapters over the base weights.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from router_service.backend import BackendError, GenerationDelta, SamplingSpec, TokenLogprob
from vllm_runtime.engine_args import EngineSpec
from vllm_runtime.engine_server import EngineServer


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
        super().__init__(spec, pool, core_offset)
        self.lora_requests = self._lora_requests(lora_adapters or {})

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
        params = sampling_params(sampling, kv_transfer_params)
        self.inflight += 1
        try:
            async for out in self.engine.generate(prompt_token_ids, params, request_id, lora):
                delta = to_delta(out)
                if delta.finish_reason == "error":
                    # vLLM's only request-level error: the KV pull failed (policy "fail").
                    raise BackendError("KV transfer from the prefill pool failed; retry", 503)
                yield delta
        finally:
            self.inflight -= 1

    async def release(self, request_id: str, kv_transfer_params: dict[str, Any]) -> None:
        """Frees the prefill engine's leased blocks for a request that will never be decoded."""
        await self.engine.engine.notify_kv_transfer_request_rejected(request_id, kv_transfer_params)
