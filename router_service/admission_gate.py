"""Admission control at the ingress: at most ``max_inflight`` requests in the P/D pipeline per
ingress replica; the next one is answered 503 with Retry-After at once, before it costs a
prefill, instead of queueing in the ingress and the engines until memory runs out. The
engines keep their own limits (vllm_runtime/admission.py): this gate bounds what one ingress
sends, they bound what one engine holds."""

from __future__ import annotations

from collections.abc import AsyncIterator

from contract.wire import ErrorCode, GenerationDelta, ServingError
from router_service.backend import GenerationBackend, GenerationRequest


class AdmissionGate:
    """A GenerationBackend that admits at most ``max_inflight`` requests at once."""

    def __init__(self, inner: GenerationBackend, max_inflight: int | None,
                 retry_after_s: int = 2) -> None:
        self.inner = inner
        self.max_inflight = max_inflight
        self.retry_after_s = retry_after_s
        self.inflight = 0
        self.refused = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        if self.max_inflight is not None and self.inflight >= self.max_inflight:
            self.refused += 1
            raise ServingError(
                f"The server is overloaded ({self.inflight} requests in flight at this ingress, "
                f"limit {self.max_inflight}); retry after {self.retry_after_s} s.", 503,
                code=ErrorCode.OVERLOADED, retryable=False,
                headers={"retry-after": str(self.retry_after_s)})
        self.inflight += 1
        try:
            async for delta in self.inner.generate(request):
                yield delta
        finally:
            self.inflight -= 1
