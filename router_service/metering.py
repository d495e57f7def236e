"""Measuring requests at the ingress: an ASGI middleware (status and end-to-end time of each
completion request) and a GenerationBackend wrapper (time to first token, tokens in and out,
prefix-cache hits, requests in flight). Both report to a RequestMetricsSink
(router_service/metrics.py). Runs in the ingress replica; no Ray import, so tests use a
recording sink.

The role label comes from the API: build_api sets ``request.state.metrics_role`` to the
configured role a request resolved to. Anything that fails before that (unknown model, bad
body, auth) is labelled "unknown", so a client can never mint label values.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from contract.wire import GenerationDelta
from router_service.backend import GenerationBackend, GenerationRequest

if TYPE_CHECKING:  # router_service.metrics imports Ray; this module stays importable without
    from router_service.metrics import RequestMetricsSink

ROLE_STATE = "metrics_role"
UNKNOWN_ROLE = "unknown"

Clock = Callable[[], float]


def is_completion_call(scope: dict[str, Any]) -> bool:
    return (scope.get("type") == "http" and scope.get("method") == "POST"
            and str(scope.get("path", "")).endswith("/completions"))


class RequestMetricsMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware): it sees the status when the response starts and
    the end when the last body chunk goes out, so a streamed response is timed to its end."""

    def __init__(self, app: Any, sink: RequestMetricsSink,
                 clock: Clock = time.perf_counter) -> None:
        self.app = app
        self.sink = sink
        self.clock = clock

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not is_completion_call(scope):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # the dict behind request.state
        start = self.clock()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            role = state.get(ROLE_STATE) or UNKNOWN_ROLE
            self.sink.request_finished(role, status, self.clock() - start)


class MeteredBackend:
    """A GenerationBackend that measures the one it wraps."""

    def __init__(self, inner: GenerationBackend, sink: RequestMetricsSink,
                 clock: Clock = time.perf_counter) -> None:
        self.inner = inner
        self.sink = sink
        self.clock = clock
        self._inflight: Counter[str] = Counter()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        role = request.role
        start = self.clock()
        self._set_inflight(role, +1)
        first = True
        completion = 0
        finished: GenerationDelta | None = None
        stream = self.inner.generate(request)
        try:
            async for delta in stream:
                if first and delta.token_ids:
                    self.sink.first_token(role, self.clock() - start)
                    first = False
                completion += len(delta.token_ids)
                if delta.finish_reason is not None:
                    finished = delta
                yield delta
        finally:
            try:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()  # closing us early aborts the request inside
            finally:
                self._set_inflight(role, -1)
                # Prompt and cached tokens of finished requests only, so that cached / prompt
                # is the prefill pool's hit ratio over the same requests.
                prompt = len(request.prompt_token_ids) if finished is not None else 0
                cached = (finished.num_cached_prompt_tokens or 0) if finished is not None else 0
                self.sink.tokens(role, prompt, completion, cached)

    def _set_inflight(self, role: str, change: int) -> None:
        self._inflight[role] += change
        self.sink.inflight(role, self._inflight[role])
