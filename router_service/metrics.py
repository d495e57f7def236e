"""The ingress's request metrics, through Ray's metrics API (they reach Prometheus with Ray's
own, as ``ray_<name>``; counters get ``_total``). Runs in the ingress replica.

Labels are the agent role (only configured role names, or "unknown"), the HTTP status and the
ingress replica: never keys, prompts or anything else a client sends. The engine side's
metrics are vllm_runtime/engine_metrics.py; routing decisions routing/metrics.py.
"""

from __future__ import annotations

from typing import Protocol

from ray.util.metrics import Counter, Gauge, Histogram

from vllm_runtime.held_gauges import HeldGauges

# Seconds. Prefill of a long context on CPU takes seconds; on GPUs tens of milliseconds.
TTFT_BUCKETS = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]
LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]

# Every metric this module defines (Prometheus names; the dashboard test checks against them).
REQUESTS = "prefillshare_requests"
REQUEST_LATENCY = "prefillshare_request_latency_seconds"
TTFT = "prefillshare_ttft_seconds"
PROMPT_TOKENS = "prefillshare_prompt_tokens"
COMPLETION_TOKENS = "prefillshare_completion_tokens"
CACHED_PROMPT_TOKENS = "prefillshare_prefill_cached_tokens"
INFLIGHT = "prefillshare_inflight_requests"
NAMES = (REQUESTS, REQUEST_LATENCY, TTFT, PROMPT_TOKENS, COMPLETION_TOKENS,
         CACHED_PROMPT_TOKENS, INFLIGHT)


class RequestMetricsSink(Protocol):
    """What router_service/metering.py reports; tests record it, the ingress sends it to Ray."""

    def request_finished(self, role: str, status: int, seconds: float) -> None: ...

    def first_token(self, role: str, seconds: float) -> None: ...

    def tokens(self, role: str, prompt: int, completion: int, cached: int) -> None: ...

    def inflight(self, role: str, count: int) -> None: ...


class IngressMetrics:
    """RequestMetricsSink over ray.util.metrics."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        role = ("role", "replica")
        self._requests = Counter(REQUESTS, tag_keys=(*role, "status"),
                                 description="HTTP requests to the completion endpoints by status.")
        self._latency = Histogram(REQUEST_LATENCY, boundaries=LATENCY_BUCKETS, tag_keys=role,
                                  description="End-to-end time of successful requests (last byte sent).")
        self._ttft = Histogram(TTFT, boundaries=TTFT_BUCKETS, tag_keys=role,
                               description="From the P/D pipeline's start to the first output token.")
        self._prompt = Counter(PROMPT_TOKENS, tag_keys=role,
                               description="Prompt tokens of finished requests.")
        self._completion = Counter(COMPLETION_TOKENS, tag_keys=role,
                                   description="Generated tokens.")
        self._cached = Counter(CACHED_PROMPT_TOKENS, tag_keys=role,
                               description="Prompt tokens of finished requests that the prefill "
                               "pool served from its prefix cache.")
        self._inflight = Gauge(INFLIGHT, tag_keys=role,
                               description="Requests in the P/D pipeline at this ingress replica.")
        self._gauges = HeldGauges()  # an idle ingress keeps reporting its 0

    def _tags(self, role: str) -> dict[str, str]:
        return {"role": role, "replica": self.replica}

    def request_finished(self, role: str, status: int, seconds: float) -> None:
        self._requests.inc(1, tags={**self._tags(role), "status": str(status)})
        if 200 <= status < 300:
            self._latency.observe(seconds, tags=self._tags(role))

    def first_token(self, role: str, seconds: float) -> None:
        self._ttft.observe(seconds, tags=self._tags(role))

    def tokens(self, role: str, prompt: int, completion: int, cached: int) -> None:
        tags = self._tags(role)
        # Ray counters raise on an increment of 0.
        for counter, n in ((self._prompt, prompt), (self._completion, completion),
                           (self._cached, cached)):
            if n > 0:
                counter.inc(n, tags=tags)

    def inflight(self, role: str, count: int) -> None:
        self._gauges.set(self._inflight, count, self._tags(role))
