"""Request metrics at the ingress (router_service/metering.py): the API with the metrics
middleware and a metered fake backend, reporting into a recording sink."""

from __future__ import annotations

from typing import Any

from bench.fake_backend import FakeBackend
from contract.wire import ServingError
from router_service.metering import MeteredBackend, RequestMetricsMiddleware
from tests.api_fixtures import chat_body, http_client, make_app, sse_payloads


class Sink:
    """Records what the metering reports."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, int, float]] = []
        self.ttft: list[tuple[str, float]] = []
        self.token_counts: list[tuple[str, int, int, int]] = []
        self.inflight_seen: list[tuple[str, int]] = []

    def request_finished(self, role: str, status: int, seconds: float) -> None:
        self.finished.append((role, status, seconds))

    def first_token(self, role: str, seconds: float) -> None:
        self.ttft.append((role, seconds))

    def tokens(self, role: str, prompt: int, completion: int, cached: int) -> None:
        self.token_counts.append((role, prompt, completion, cached))

    def inflight(self, role: str, count: int) -> None:
        self.inflight_seen.append((role, count))


def metered_app(fake: FakeBackend) -> tuple[Any, Sink]:
    sink = Sink()
    app, _ = make_app(MeteredBackend(fake, sink))  # type: ignore[arg-type]
    app.add_middleware(RequestMetricsMiddleware, sink=sink)
    return app, sink


async def test_a_finished_chat_request_is_counted_with_its_tokens() -> None:
    fake = FakeBackend(block_size=16)
    app, sink = metered_app(fake)
    async with http_client(app) as client:
        body = chat_body("Tell me about the weather today in some detail.", model="planner",
                         max_tokens=5)
        first = await client.post("/v1/chat/completions", json=body)
        again = await client.post("/v1/chat/completions", json=body)
    assert first.status_code == again.status_code == 200
    assert [(r, s) for r, s, _ in sink.finished] == [("planner", 200), ("planner", 200)]
    assert all(seconds > 0 for _, _, seconds in sink.finished)
    assert [r for r, _ in sink.ttft] == ["planner", "planner"]
    prompt = first.json()["usage"]["prompt_tokens"]
    cached = again.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0  # the fake's prefix cache served the repeat
    assert sink.token_counts == [("planner", prompt, 5, 0), ("planner", prompt, 5, cached)]
    assert sink.inflight_seen == [("planner", 1), ("planner", 0)] * 2


async def test_a_stream_is_timed_to_its_last_chunk() -> None:
    fake = FakeBackend(delay_s=0.05)
    app, sink = metered_app(fake)
    async with http_client(app) as client:
        resp = await client.post("/roles/coder/v1/completions",
                                 json={"prompt": "def f(x):", "max_tokens": 6, "stream": True})
    assert resp.status_code == 200
    assert sse_payloads(resp.text)[-1] == "[DONE]"
    [(role, status, seconds)] = sink.finished
    [(_, ttft)] = sink.ttft
    assert (role, status) == ("coder", 200)
    # Six deltas 50 ms apart: the first token after ~50 ms, the end after ~300 ms.
    assert 0.04 < ttft < seconds and seconds >= 0.29
    assert sink.token_counts[0][2] == 6


async def test_errors_are_counted_by_status_and_unknown_roles_never_become_labels() -> None:
    fake = FakeBackend()
    app, sink = metered_app(fake)
    async with http_client(app) as client:
        missing = await client.post("/v1/chat/completions", json=chat_body(model="attacker-$KEY"))
        bad = await client.post("/v1/chat/completions", json={"model": "critic", "messages": 3})
        fake.fail_with = ServingError("no replica", 503)
        failed = await client.post("/v1/chat/completions", json=chat_body(model="critic"))
        models = await client.get("/v1/models")
    assert (missing.status_code, bad.status_code, failed.status_code, models.status_code) == (
        404, 400, 503, 200)
    # The 400 fails validation before a role is resolved: "unknown", like the 404.
    assert [(r, s) for r, s, _ in sink.finished] == [("unknown", 404), ("unknown", 400),
                                                     ("critic", 503)]
    assert sink.ttft == []
    assert sink.token_counts == [("critic", 0, 0, 0)]
    assert sink.inflight_seen == [("critic", 1), ("critic", 0)]


async def test_a_stream_that_fails_midway_leaves_nothing_in_flight() -> None:
    fake = FakeBackend()
    fake.fail_with, fake.fail_after_deltas = ServingError("decode replica lost", 503), 2
    app, sink = metered_app(fake)
    async with http_client(app) as client:
        resp = await client.post("/v1/completions", json={"model": "planner", "prompt": "hi",
                                                          "max_tokens": 6, "stream": True})
    assert resp.status_code == 200  # the headers went out before the failure
    assert any(isinstance(p, dict) and "error" in p for p in sse_payloads(resp.text))
    assert sink.token_counts == [("planner", 0, 2, 0)]  # two tokens out, never finished
    assert sink.inflight_seen[-1] == ("planner", 0)


def test_ray_backed_sink_accepts_what_the_metering_reports() -> None:
    from router_service.metrics import IngressMetrics

    metrics = IngressMetrics(replica="test")
    metrics.request_finished("planner", 200, 0.5)
    metrics.request_finished("unknown", 404, 0.01)
    metrics.first_token("planner", 0.1)
    metrics.tokens("planner", 0, 0, 0)  # a failed request: Ray counters refuse increments of 0
    metrics.tokens("planner", 10, 3, 0)
    metrics.inflight("planner", 0)
