"""POST /v1/completions, the per-role completions route, /v1/models and /health."""

from __future__ import annotations

from typing import Any

from bench.fake_backend import FakeBackend, fake_tokens
from tests.api_fixtures import (  # noqa: F401  (fixtures are used by name)
    api_backend,
    api_client,
    smollm2_tokenizer,
    sse_payloads,
)


def _ids(text: str) -> tuple[int, ...]:
    return tuple(smollm2_tokenizer().encode(text, add_special_tokens=True))


async def test_completion_string_prompt(api_client: Any, api_backend: FakeBackend) -> None:
    resp = await api_client.post("/v1/completions", json={
        "model": "coder", "prompt": "def add(a, b):", "max_tokens": 4})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    prompt = _ids("def add(a, b):")
    assert api_backend.requests[-1].prompt_token_ids == prompt
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-") and resp.headers["x-request-id"] == body["id"]
    assert body["model"] == "coder"
    assert body["choices"][0]["text"] == "".join(t.text for t in fake_tokens(prompt, 4))
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["logprobs"] is None
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 4,
                             "total_tokens": len(prompt) + 4,
                             "prompt_tokens_details": {"cached_tokens": 0}}


async def test_completion_prompt_forms(api_client: Any, api_backend: FakeBackend) -> None:
    for prompt, expected in ((["hello"], _ids("hello")), ([5, 6, 7], (5, 6, 7)),
                             ([[8, 9]], (8, 9))):
        resp = await api_client.post("/v1/completions",
                                     json={"model": "coder", "prompt": prompt, "max_tokens": 1})
        assert resp.status_code == 200, resp.text
        assert api_backend.requests[-1].prompt_token_ids == expected
        assert resp.json()["usage"]["prompt_tokens"] == len(expected)


async def test_completion_logprobs(api_client: Any) -> None:
    resp = await api_client.post("/v1/completions", json={
        "model": "coder", "prompt": [1, 2, 3], "max_tokens": 3, "logprobs": 2})
    lp = resp.json()["choices"][0]["logprobs"]
    expected = fake_tokens((1, 2, 3), 3)
    assert lp["tokens"] == [t.text for t in expected]
    assert lp["token_logprobs"] == [t.logprob for t in expected]
    assert [len(top) for top in lp["top_logprobs"]] == [2, 2, 2]
    assert lp["text_offset"] == [0, len(expected[0].text), len(expected[0].text + expected[1].text)]


async def test_completion_streaming_with_usage(api_client: Any) -> None:
    resp = await api_client.post("/v1/completions", json={
        "model": "coder", "prompt": [1, 2, 3], "max_tokens": 3, "stream": True,
        "stream_options": {"include_usage": True}})
    events = sse_payloads(resp.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == "".join(t.text for t in fake_tokens((1, 2, 3), 3))
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 6


async def test_completion_streaming_logprob_offsets(api_client: Any) -> None:
    resp = await api_client.post("/v1/completions", json={
        "model": "coder", "prompt": [1, 2, 3], "max_tokens": 3, "stream": True, "logprobs": 0})
    chunks = [c for c in sse_payloads(resp.text)[:-1] if c["choices"][0]["logprobs"]]
    offsets = [c["choices"][0]["logprobs"]["text_offset"][0] for c in chunks]
    texts = [t.text for t in fake_tokens((1, 2, 3), 3)]
    assert offsets == [0, len(texts[0]), len(texts[0]) + len(texts[1])]


async def test_per_role_completions(api_client: Any, api_backend: FakeBackend) -> None:
    resp = await api_client.post("/roles/planner/v1/completions",
                                 json={"prompt": "x", "max_tokens": 1})
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "planner" and api_backend.requests[-1].role == "planner"


async def test_session_from_user_field(api_client: Any, api_backend: FakeBackend) -> None:
    await api_client.post("/v1/completions",
                          json={"model": "coder", "prompt": "x", "user": "agent-run-3"})
    assert api_backend.requests[-1].session_id == "agent-run-3"
    await api_client.post("/v1/completions", json={"model": "coder", "prompt": "x"},
                          headers={"x-session-id": "s1"})
    assert api_backend.requests[-1].session_id == "s1"


async def test_models_list_and_retrieve(api_client: Any) -> None:
    resp = await api_client.get("/v1/models")
    body = resp.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["planner", "coder", "critic"]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in body["data"])
    one = await api_client.get("/v1/models/coder")
    assert one.status_code == 200 and one.json()["id"] == "coder"
    per_role = await api_client.get("/roles/critic/v1/models")
    assert [m["id"] for m in per_role.json()["data"]] == ["critic"]


async def test_health(api_client: Any) -> None:
    resp = await api_client.get("/health")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}
