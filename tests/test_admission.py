"""Admission control (issue 15): an engine past its pool's limits, or an ingress past its
in-flight limit, answers 503 with Retry-After (OpenAI's error body, code `overloaded`) before
any work starts; under the limits everything is admitted."""

from __future__ import annotations

import asyncio

import pytest

from bench.fake_backend import FakeBackend
from contract.config import AppConfig
from contract.wire import ErrorCode
from router_service.admission_gate import AdmissionGate
from tests.api_fixtures import assert_openai_error, chat_body, http_client, make_app
from vllm_runtime.admission import AdmissionLimits, waiting_requests


def test_engine_limits_refuse_past_the_queue_or_kv_bound():
    limits = AdmissionLimits(max_waiting=4, max_kv_usage=0.9, retry_after_s=3)
    assert limits.refusal(waiting=4, kv_usage=0.9) is None  # at the limit: admitted
    queue = limits.refusal(waiting=5, kv_usage=0.1)
    assert queue is not None and queue.status_code == 503 and queue.code == ErrorCode.OVERLOADED
    assert queue.headers == {"retry-after": "3"} and "5 requests waiting (limit 4)" in queue.message
    kv = limits.refusal(waiting=0, kv_usage=0.95)
    assert kv is not None and "KV cache 95% full (limit 90%)" in kv.message
    assert AdmissionLimits().refusal(waiting=10_000, kv_usage=1.0) is None  # no limits: off


@pytest.mark.parametrize("inflight, slots, engine_waiting, waiting", [
    (3, 2, 0, 1),  # three decode requests pulling KV at once: vLLM counts none as waiting
    (2, 2, 0, 0),  # every one has a slot
    (1, 2, 0, 0),
    (3, 2, 4, 4),  # vLLM's count is larger (the last step saw more): it stands
])
def test_requests_beyond_the_engines_slots_wait_whatever_vllm_calls_them(
        inflight, slots, engine_waiting, waiting):
    assert waiting_requests(inflight, slots, engine_waiting) == waiting


def test_pool_limits_reach_the_engines_plan():
    from deployments.plan import _admission

    cfg = AppConfig.model_validate({"roles": [{"name": "planner"}], "limits": {"retry_after_s": 5},
                                    "prefill_pools": {"shared": {"max_waiting": 8,
                                                                 "max_kv_usage": 0.85}}})
    assert _admission(cfg, cfg.prefill_pools["shared"]) == AdmissionLimits(8, 0.85, 5)
    with pytest.raises(ValueError, match="max_kv_usage"):
        AppConfig.model_validate({"roles": [{"name": "p", "decode_pool": {"max_kv_usage": 1.5}}]})


async def test_the_ingress_gate_answers_503_with_retry_after_past_max_inflight():
    fake = FakeBackend(natural_length=40, delay_s=0.02)  # ~0.8 s per request
    gate = AdmissionGate(fake, max_inflight=2, retry_after_s=4)
    app, _ = make_app(gate)
    async with http_client(app) as client:
        body = chat_body(model="planner")
        first = [asyncio.create_task(client.post("/v1/chat/completions", json=body))
                 for _ in range(2)]

        async def both_in_flight() -> None:
            while gate.inflight < 2:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(both_in_flight(), timeout=30)
        refused = await client.post("/v1/chat/completions", json={**body, "stream": True})
        assert_openai_error(refused, 503, ErrorCode.OVERLOADED)
        assert refused.headers["retry-after"] == "4"
        assert "2 requests in flight at this ingress, limit 2" in refused.json()["error"]["message"]
        assert [r.status_code for r in await asyncio.gather(*first)] == [200, 200]
        assert gate.inflight == 0 and gate.refused == 1
        after = await client.post("/v1/chat/completions", json=body)
        assert after.status_code == 200  # room again: admitted
