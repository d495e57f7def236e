"""Tools, structured output, n > 1 and the sampling surface through the official `openai`
client, on a scripted fake backend (no engines): what the request carries to the engines,
what the response and the stream look like, and the prompt layout the decoders see."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import openai
import pytest

from bench.fake_backend import FakeBackend
from contract.roles import ServedRole
from router_service.backend import GenerationRequest
from tests.api_fixtures import make_app, smollm2_tokenizer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TWO_CALLS = CALL + '\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>'
ROLES = [ServedRole("tool_caller", "You call tools."), ServedRole("planner", "You plan.")]


def prompt_text(request: GenerationRequest) -> str:
    return smollm2_tokenizer().decode(list(request.prompt_token_ids))


def _client(backend: FakeBackend) -> openai.AsyncOpenAI:
    app, _ = make_app(backend, roles=ROLES)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http,
                              max_retries=0)


@pytest.fixture
def scripted() -> Callable[[Callable[[GenerationRequest], str]], FakeBackend]:
    return lambda reply: FakeBackend(reply=reply)


@pytest.fixture
async def tool_sdk() -> AsyncIterator[tuple[openai.AsyncOpenAI, FakeBackend]]:
    backend = FakeBackend(reply=lambda r: "It is sunny." if "<tool_response>" in prompt_text(r)
                          else CALL)
    client = _client(backend)
    yield client, backend
    await client.close()


# ---- tool calling -------------------------------------------------------------------------------

async def test_auto_tool_call_is_returned_as_tool_calls(tool_sdk) -> None:
    sdk, backend = tool_sdk
    resp = await sdk.chat.completions.create(
        model="tool_caller", messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    # The tools are listed in the role suffix, after the conversation (the shared prefix).
    text = prompt_text(backend.requests[-1])
    assert text.index("Weather in Paris?") < text.index("<tools>") < text.index("get_weather")
    # auto: the hermes structural tag behind its <tool_call> trigger, arguments constrained.
    tag = json.loads(backend.requests[-1].sampling.structured_output.structural_tag)
    assert tag["format"]["type"] == "triggered_tags" and tag["format"]["triggers"] == ["<tool_call>"]


async def test_history_with_tool_calls_and_results_is_rendered(tool_sdk) -> None:
    sdk, backend = tool_sdk
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    resp = await sdk.chat.completions.create(model="tool_caller", messages=messages,
                                             tools=[WEATHER])
    assert resp.choices[0].message.content == "It is sunny."
    assert resp.choices[0].finish_reason == "stop"
    text = prompt_text(backend.requests[-1])
    assert CALL in text  # the assistant's call, exactly as a decoder writes one
    assert "<|im_start|>tool\n<tool_response>\nsunny, 21 C\n</tool_response><|im_end|>" in text


async def test_named_and_required_tool_choice_force_a_call(scripted) -> None:
    backend = scripted(lambda r: CALL)
    sdk = _client(backend)
    named = await sdk.chat.completions.create(
        model="tool_caller", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    # OpenAI (and vLLM) say "stop" when the request named the tool.
    assert named.choices[0].finish_reason == "stop"
    assert named.choices[0].message.tool_calls[0].function.name == "get_weather"
    tag = json.loads(backend.requests[-1].sampling.structured_output.structural_tag)
    assert [t["begin"] for t in tag["format"]["tags"]][0].startswith(
        '<tool_call>\n{"name": "get_weather"')
    assert all("get_time" not in t["begin"] for t in tag["format"]["tags"])
    assert tag["format"]["tags"][0]["content"]["json_schema"] == WEATHER["function"]["parameters"]

    required = await sdk.chat.completions.create(
        model="tool_caller", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER, TIME],
        tool_choice="required")
    assert required.choices[0].finish_reason == "tool_calls"
    tag = json.loads(backend.requests[-1].sampling.structured_output.structural_tag)
    names = {re.search(r'"name": "(\w+)"', t["begin"])[1] for t in tag["format"]["tags"]}
    assert names == {"get_weather", "get_time"} and tag["format"]["at_least_one"]
    await sdk.close()


async def test_parallel_tool_calls_and_their_switch(scripted) -> None:
    sdk = _client(scripted(lambda r: TWO_CALLS))
    both = await sdk.chat.completions.create(
        model="tool_caller", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER, TIME])
    assert [c.function.name for c in both.choices[0].message.tool_calls] == [
        "get_weather", "get_time"]
    one = await sdk.chat.completions.create(
        model="tool_caller", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER, TIME],
        parallel_tool_calls=False)
    assert [c.function.name for c in one.choices[0].message.tool_calls] == ["get_weather"]
    await sdk.close()


async def test_streamed_tool_call_assembles_like_openai(scripted) -> None:
    sdk = _client(scripted(lambda r: "Let me check." + CALL))
    stream = await sdk.chat.completions.create(
        model="tool_caller", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER],
        stream=True, stream_options={"include_usage": True})
    content, name, args, finish, ids = "", "", "", None, set()
    async for chunk in stream:
        for c in chunk.choices:
            content += c.delta.content or ""
            for call in c.delta.tool_calls or ():
                ids.add(call.id) if call.id else None
                name += (call.function.name or "") if call.function else ""
                args += (call.function.arguments or "") if call.function else ""
            finish = c.finish_reason or finish
    assert content == "Let me check."
    assert name == "get_weather" and json.loads(args) == {"city": "Paris"} and len(ids) == 1
    assert finish == "tool_calls"
    await sdk.close()


async def test_tool_choice_none_keeps_tools_out_and_text_as_is(scripted) -> None:
    backend = scripted(lambda r: CALL)
    sdk = _client(backend)
    resp = await sdk.chat.completions.create(
        model="tool_caller", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER],
        tool_choice="none")
    assert resp.choices[0].message.content == CALL and not resp.choices[0].message.tool_calls
    assert "<tools>" not in prompt_text(backend.requests[-1])
    assert backend.requests[-1].sampling.structured_output is None
    await sdk.close()


async def test_roles_with_different_tools_share_the_conversation_prefix(scripted) -> None:
    backend = scripted(lambda r: "ok")
    sdk = _client(backend)
    conversation = [{"role": "user", "content": "Plan a trip to Paris and check the weather."},
                    {"role": "assistant", "content": "First, the weather."}]
    await sdk.chat.completions.create(model="tool_caller", messages=conversation, tools=[WEATHER])
    await sdk.chat.completions.create(model="planner", messages=conversation, tools=[TIME])
    await sdk.chat.completions.create(model="planner", messages=conversation)
    a, b, c = (r.prompt_token_ids for r in backend.requests[-3:])
    from contract.prompt_layout import PromptBuilder, Turn
    context = PromptBuilder(smollm2_tokenizer()).chat_prompt(
        [Turn(m["role"], m["content"]) for m in conversation]).context_len
    assert a[:context] == b[:context] == c[:context]
    assert a[context:] != b[context:]
    await sdk.close()


# ---- structured output ----------------------------------------------------------------------

async def test_response_format_reaches_the_decode_engine_as_a_constraint(scripted) -> None:
    backend = scripted(lambda r: '{"city": "Paris"}')
    sdk = _client(backend)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    resp = await sdk.chat.completions.create(
        model="planner", messages=[{"role": "user", "content": "city?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    assert json.loads(resp.choices[0].message.content) == {"city": "Paris"}
    assert json.loads(backend.requests[-1].sampling.structured_output.json) == schema
    await sdk.chat.completions.create(model="planner", messages=[{"role": "user", "content": "x"}],
                                      response_format={"type": "json_object"})
    assert backend.requests[-1].sampling.structured_output.json_object
    await sdk.chat.completions.create(model="planner", messages=[{"role": "user", "content": "x"}],
                                      response_format={"type": "text"})
    assert backend.requests[-1].sampling.structured_output is None
    await sdk.close()


# ---- n > 1 and the sampling surface ------------------------------------------------------------

async def test_n_choices_whole_and_streamed() -> None:
    backend = FakeBackend(natural_length=4)
    sdk = _client(backend)
    resp = await sdk.chat.completions.create(
        model="planner", messages=[{"role": "user", "content": "hi"}], n=3, seed=5)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    texts = [c.message.content for c in resp.choices]
    assert len(set(texts)) == 3 and all(texts)
    assert resp.usage.completion_tokens == 12
    seeds = sorted(r.sampling.seed for r in backend.requests
                   if r.request_id.startswith(resp.id) and r.n == 1)
    assert seeds == [5, 6, 7]  # as vLLM seeds its n children

    stream = await sdk.chat.completions.create(
        model="planner", messages=[{"role": "user", "content": "hi"}], n=3, seed=5, stream=True)
    got: dict[int, str] = {}
    finished: dict[int, str] = {}
    async for chunk in stream:
        for c in chunk.choices:
            got[c.index] = got.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finished[c.index] = c.finish_reason
    assert [got[i] for i in range(3)] == texts
    assert finished == {0: "stop", 1: "stop", 2: "stop"}
    await sdk.close()


async def test_sampling_knobs_reach_the_engine_request() -> None:
    backend = FakeBackend()
    sdk = _client(backend)
    await sdk.chat.completions.create(
        model="planner", messages=[{"role": "user", "content": "hi"}], max_tokens=7,
        presence_penalty=0.5, frequency_penalty=-0.25, logit_bias={"42": -100, "7": 2.5},
        stop=["\n\n"], seed=11, logprobs=True, top_logprobs=2,
        extra_body={"repetition_penalty": 1.1, "min_tokens": 3, "stop_token_ids": [2]})
    s = backend.requests[-1].sampling
    assert (s.max_tokens, s.presence_penalty, s.frequency_penalty) == (7, 0.5, -0.25)
    assert s.logit_bias == ((7, 2.5), (42, -100.0))
    assert (s.stop, s.stop_token_ids, s.seed, s.logprobs) == (("\n\n",), (2,), 11, 2)
    assert (s.repetition_penalty, s.min_tokens) == (1.1, 3)
    await sdk.close()


async def test_role_default_max_tokens_applies_without_max_tokens() -> None:
    backend = FakeBackend()
    app, _ = make_app(backend, roles=[ServedRole("planner", None, default_max_tokens=9)])
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    await http.post("/v1/chat/completions",
                    json={"model": "planner", "messages": [{"role": "user", "content": "x"}]})
    assert backend.requests[-1].sampling.max_tokens == 9
    await http.aclose()


def test_unknown_tool_in_tool_choice_is_a_400_naming_the_field() -> None:
    from tests.api_fixtures import assert_openai_error

    async def go() -> Any:
        app, backend = make_app(FakeBackend(), roles=ROLES)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://test") as http:
            resp = await http.post("/v1/chat/completions", json={
                "model": "tool_caller", "messages": [{"role": "user", "content": "x"}],
                "tools": [WEATHER], "tool_choice": {"type": "function",
                                                    "function": {"name": "launch"}}})
        return resp, backend

    import asyncio
    resp, backend = asyncio.run(go())
    err = assert_openai_error(resp, 400, param="tool_choice")
    assert "launch" in err["message"] and backend.requests == []


def test_responses_api_answers_404_with_the_chat_completions_setting() -> None:
    import asyncio

    from tests.api_fixtures import assert_openai_error

    async def go() -> Any:
        app, _ = make_app(FakeBackend(), roles=ROLES)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://test") as http:
            return [await http.post(path, json={"model": "planner", "input": "hi"})
                    for path in ("/v1/responses", "/roles/planner/v1/responses")]

    for resp in asyncio.run(go()):
        err = assert_openai_error(resp, 404, code="unsupported_endpoint")
        assert "set_default_openai_api" in err["message"]

