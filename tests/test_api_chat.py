"""POST /v1/chat/completions and the per-role chat route, against the fake backend."""

from __future__ import annotations

from typing import Any

from bench.fake_backend import FakeBackend, fake_tokens
from contract.prompt_layout import PromptBuilder, Turn
from tests.api_fixtures import (  # noqa: F401  (fixtures are used by name)
    API_ROLES,
    api_backend,
    api_client,
    chat_body,
    http_client,
    make_app,
    smollm2_tokenizer,
    sse_payloads,
)


def _expected_prompt(role_index: int, content: str) -> tuple[int, ...]:
    role = API_ROLES[role_index]
    built = PromptBuilder(smollm2_tokenizer()).chat_prompt([Turn("user", content)],
                                                           role.instructions)
    return built.token_ids


async def test_chat_non_streaming(api_client: Any, api_backend: FakeBackend) -> None:
    resp = await api_client.post("/v1/chat/completions",
                                 json=chat_body(model="planner", max_tokens=5))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    prompt = _expected_prompt(0, "Say hello.")
    expected = fake_tokens(prompt, 5)
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-") and len(body["id"]) == len("chatcmpl-") + 32
    assert resp.headers["x-request-id"] == body["id"]
    assert body["model"] == "planner"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "".join(t.text for t in expected)}
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    assert body["usage"]["prompt_tokens"] == len(prompt)
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == len(prompt) + 5
    req = api_backend.requests[-1]
    assert req.role == "planner" and req.prompt_token_ids == prompt
    assert req.request_id == body["id"]
    assert req.sampling.max_tokens == 5 and req.sampling.temperature == 1.0
    assert api_backend.completed == {req.request_id}


async def test_chat_sampling_fields_reach_the_backend(api_client: Any,
                                                      api_backend: FakeBackend) -> None:
    resp = await api_client.post("/v1/chat/completions", json=chat_body(
        model="coder", max_completion_tokens=7, max_tokens=3, temperature=0.0, top_p=0.5,
        seed=11, stop=["w9"], ignore_eos=True, unknown_field={"x": 1}))
    assert resp.status_code == 200, resp.text
    s = api_backend.requests[-1].sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.seed, s.stop, s.ignore_eos) == (
        7, 0.0, 0.5, 11, ("w9",), True)
    assert s.logprobs is None


async def test_chat_natural_stop_and_default_max_tokens(api_client: Any,
                                                        api_backend: FakeBackend) -> None:
    resp = await api_client.post("/v1/chat/completions", json=chat_body(model="critic"))
    body = resp.json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == api_backend.natural_length
    prompt_len = body["usage"]["prompt_tokens"]
    # Without max_tokens a request may use the rest of the context window, as in vLLM.
    assert api_backend.requests[-1].sampling.max_tokens == 512 - prompt_len


async def test_chat_stop_string_cuts_text(api_client: Any) -> None:
    prompt = _expected_prompt(0, "Say hello.")
    third = fake_tokens(prompt, 3)[2].text
    resp = await api_client.post("/v1/chat/completions",
                                 json=chat_body(model="planner", stop=third, max_tokens=6))
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "".join(t.text for t in fake_tokens(prompt, 2))


async def test_chat_logprobs(api_client: Any, api_backend: FakeBackend) -> None:
    resp = await api_client.post("/v1/chat/completions", json=chat_body(
        model="planner", max_tokens=3, logprobs=True, top_logprobs=2))
    assert resp.status_code == 200, resp.text
    assert api_backend.requests[-1].sampling.logprobs == 2
    content = resp.json()["choices"][0]["logprobs"]["content"]
    expected = fake_tokens(_expected_prompt(0, "Say hello."), 3)
    assert [c["token"] for c in content] == [t.text for t in expected]
    assert [c["logprob"] for c in content] == [t.logprob for t in expected]
    assert all(len(c["top_logprobs"]) == 2 for c in content)
    assert content[0]["bytes"] == list(expected[0].text.encode())


async def test_chat_streaming_with_usage(api_client: Any) -> None:
    resp = await api_client.post("/v1/chat/completions", json=chat_body(
        model="planner", max_tokens=4, stream=True, stream_options={"include_usage": True}))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_payloads(resp.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"] == resp.headers["x-request-id"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    prompt = _expected_prompt(0, "Say hello.")
    assert text == "".join(t.text for t in fake_tokens(prompt, 4))
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["finish_reason"] for f in finals] == ["length"]
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == len(prompt)
    assert usage_chunk["usage"]["completion_tokens"] == 4
    assert usage_chunk["usage"]["total_tokens"] == len(prompt) + 4
    assert all("usage" not in c for c in chunks[:-1])


async def test_chat_streaming_without_usage(api_client: Any) -> None:
    resp = await api_client.post("/v1/chat/completions",
                                 json=chat_body(model="planner", max_tokens=2, stream=True))
    events = sse_payloads(resp.text)
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "length"


async def test_per_role_route_uses_the_path_role(api_client: Any,
                                                 api_backend: FakeBackend) -> None:
    resp = await api_client.post("/roles/coder/v1/chat/completions",
                                 json=chat_body(model="whatever-the-sdk-sends", max_tokens=2))
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "coder"
    assert api_backend.requests[-1].role == "coder"
    assert api_backend.requests[-1].prompt_token_ids == _expected_prompt(1, "Say hello.")
    no_model = await api_client.post("/roles/critic/v1/chat/completions", json=chat_body())
    assert no_model.status_code == 200 and no_model.json()["model"] == "critic"


async def test_session_id_from_header_then_user(api_client: Any, api_backend: FakeBackend) -> None:
    await api_client.post("/v1/chat/completions", json=chat_body(model="planner", user="u-1"),
                          headers={"x-session-id": "sess-42"})
    assert api_backend.requests[-1].session_id == "sess-42"
    await api_client.post("/v1/chat/completions", json=chat_body(model="planner", user="u-1"))
    assert api_backend.requests[-1].session_id == "u-1"
    await api_client.post("/v1/chat/completions", json=chat_body(model="planner"))
    assert api_backend.requests[-1].session_id is None


async def test_custom_session_header() -> None:
    app, backend = make_app(session_header="X-Workflow-Id")
    async with http_client(app) as client:
        await client.post("/v1/chat/completions", json=chat_body(model="planner"),
                          headers={"x-workflow-id": "wf-7", "x-session-id": "ignored"})
    assert backend.requests[-1].session_id == "wf-7"


async def test_multi_turn_prompts_share_prefix_and_report_cached_tokens(
        api_client: Any, api_backend: FakeBackend) -> None:
    history = [{"role": "system", "content": "A team of agents. " * 20},
               {"role": "user", "content": "Solve the task."}]
    r1 = await api_client.post("/v1/chat/completions",
                               json={"model": "planner", "messages": history, "max_tokens": 3})
    plan = r1.json()["choices"][0]["message"]["content"]
    history += [{"role": "assistant", "content": plan}, {"role": "user", "content": "Go on."}]
    r2 = await api_client.post("/v1/chat/completions",
                               json={"model": "coder", "messages": history, "max_tokens": 3})
    first, second = api_backend.requests[-2:]
    shared = 0
    for a, b in zip(first.prompt_token_ids, second.prompt_token_ids):
        if a != b:
            break
        shared += 1
    assert shared > 100
    cached = r2.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == shared // 16 * 16 and cached > 0


async def test_content_parts_are_joined(api_client: Any, api_backend: FakeBackend) -> None:
    parts = [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello."}]
    await api_client.post("/v1/chat/completions", json={
        "model": "planner", "messages": [{"role": "user", "content": parts}], "max_tokens": 1})
    assert api_backend.requests[-1].prompt_token_ids == _expected_prompt(0, "Say\nhello.")
