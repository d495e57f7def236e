"""The official `openai` client, unchanged, against the app (in process, no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from bench.fake_backend import FakeBackend, fake_tokens
from contract.prompt_layout import PromptBuilder, Turn
from tests.api_fixtures import make_app, smollm2_tokenizer


@pytest.fixture
def api_backend_for_sdk() -> FakeBackend:
    return FakeBackend()


def _client(backend: FakeBackend, base_url: str) -> openai.AsyncOpenAI:
    app, _ = make_app(backend)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return openai.AsyncOpenAI(base_url=base_url, api_key="x", http_client=http, max_retries=0)


@pytest.fixture
async def sdk(api_backend_for_sdk: FakeBackend) -> AsyncIterator[openai.AsyncOpenAI]:
    client = _client(api_backend_for_sdk, "http://test/v1")
    yield client
    await client.close()


def _expected_text(instructions: str | None, content: str, n: int) -> str:
    ids = PromptBuilder(smollm2_tokenizer()).chat_prompt([Turn("user", content)],
                                                         instructions).token_ids
    return "".join(t.text for t in fake_tokens(ids, n))


async def test_sdk_chat(sdk: openai.AsyncOpenAI, api_backend_for_sdk: FakeBackend) -> None:
    resp = await sdk.chat.completions.create(
        model="planner", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
        extra_headers={"x-session-id": "wf-1"})
    assert resp.id.startswith("chatcmpl-")
    assert resp.choices[0].message.content == _expected_text(
        "You are the planner. Break the task into steps.", "hi", 3)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 3
    assert api_backend_for_sdk.requests[-1].session_id == "wf-1"


async def test_sdk_chat_logprobs(sdk: openai.AsyncOpenAI) -> None:
    resp = await sdk.chat.completions.create(
        model="coder", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
        logprobs=True, top_logprobs=3)
    assert resp.choices[0].logprobs is not None
    content = resp.choices[0].logprobs.content or []
    assert len(content) == 2 and len(content[0].top_logprobs) == 3


async def test_sdk_chat_streaming(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="critic", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
        stream=True, stream_options={"include_usage": True})
    text, usage, reasons = "", None, []
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            if chunk.choices[0].finish_reason:
                reasons.append(chunk.choices[0].finish_reason)
        if chunk.usage:
            usage = chunk.usage
    assert text == _expected_text(None, "hi", 4)
    assert reasons == ["length"]
    assert usage is not None and usage.completion_tokens == 4
    assert usage.total_tokens == usage.prompt_tokens + 4


async def test_sdk_completions(sdk: openai.AsyncOpenAI) -> None:
    resp = await sdk.completions.create(model="coder", prompt=[1, 2, 3], max_tokens=3)
    assert resp.choices[0].text == "".join(t.text for t in fake_tokens((1, 2, 3), 3))
    assert resp.usage is not None and resp.usage.prompt_tokens == 3
    stream = await sdk.completions.create(model="coder", prompt=[1, 2, 3], max_tokens=3,
                                          stream=True)
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == resp.choices[0].text


async def test_sdk_models_list(sdk: openai.AsyncOpenAI) -> None:
    models = await sdk.models.list()
    assert [m.id for m in models.data] == ["planner", "coder", "critic"]
    assert (await sdk.models.retrieve("coder")).id == "coder"


async def test_sdk_errors_map_to_exception_classes(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        await sdk.chat.completions.create(model="nobody",
                                          messages=[{"role": "user", "content": "hi"}])
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.chat.completions.create(model="planner", temperature=3,
                                          messages=[{"role": "user", "content": "hi"}])
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as too_long:
        await sdk.completions.create(model="coder", prompt=[7] * 600)
    assert too_long.value.code == "context_length_exceeded"


async def test_sdk_per_role_base_url(api_backend_for_sdk: FakeBackend) -> None:
    client = _client(api_backend_for_sdk, "http://test/roles/planner/v1")
    try:
        resp = await client.chat.completions.create(
            model="ignored", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert resp.model == "planner"
        assert api_backend_for_sdk.requests[-1].role == "planner"
        comp = await client.completions.create(model="ignored", prompt="x", max_tokens=1)
        assert comp.model == "planner"
        stream = await client.chat.completions.create(
            model="ignored", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
            stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream
                        if c.choices]) == resp.choices[0].message.content
        assert [m.id for m in (await client.models.list()).data] == ["planner"]
    finally:
        await client.close()
