"""Every client-visible failure: its HTTP status and the OpenAI-style error body."""

from __future__ import annotations

from typing import Any

import pytest

from bench.fake_backend import FakeBackend
from contract.wire import ServingError
from tests.api_fixtures import (  # noqa: F401  (fixtures are used by name)
    api_backend,
    api_client,
    assert_openai_error,
    chat_body,
    http_client,
    make_app,
)


async def test_unknown_role_is_404(api_client: Any) -> None:
    for path, body in (("/v1/chat/completions", chat_body(model="nobody")),
                       ("/v1/completions", {"model": "nobody", "prompt": "x"}),
                       ("/roles/nobody/v1/chat/completions", chat_body()),
                       ("/roles/nobody/v1/completions", {"prompt": "x"})):
        err = assert_openai_error(await api_client.post(path, json=body), 404,
                                  code="model_not_found", error_type="invalid_request_error")
        assert "nobody" in err["message"] and "planner" in err["message"]
    assert_openai_error(await api_client.get("/v1/models/nobody"), 404, code="model_not_found")


async def test_missing_model_is_400(api_client: Any) -> None:
    assert_openai_error(await api_client.post("/v1/chat/completions", json=chat_body()), 400,
                        param="model")


async def test_malformed_json_is_400(api_client: Any) -> None:
    resp = await api_client.post("/v1/chat/completions", content=b'{"model": "planner", ',
                                 headers={"content-type": "application/json"})
    err = assert_openai_error(resp, 400, error_type="invalid_request_error")
    assert "JSON" in err["message"]
    not_object = await api_client.post("/v1/completions", json=["planner"])
    assert_openai_error(not_object, 400)


BAD_CHAT_FIELDS = [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"max_completion_tokens": -3}, "max_completion_tokens"),
    ({"n": 0}, "n"),
    ({"n": 17}, "n"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"logit_bias": {"twelve": 3}}, "logit_bias"),
    ({"logit_bias": {"12": 300}}, "logit_bias"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"stop_token_ids": [99999999]}, "stop_token_ids"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"tools": [{"type": "function"}]}, "tools.0.function"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}]},
     "tools.0.function.parameters"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema",
                          "json_schema": {"name": "x", "schema": {"type": "nothing"}}}},
     "response_format.json_schema.schema"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}],
      "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "call_1"}]},
     "messages.0.tool_call_id"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages.0.tool_call_id"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     "messages.0.tool_calls"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_CHAT_FIELDS)
async def test_bad_chat_fields_are_400_naming_the_field(api_client: Any, fields: dict[str, Any],
                                                        param: str) -> None:
    body = {**chat_body(model="planner"), **fields}
    err = assert_openai_error(await api_client.post("/v1/chat/completions", json=body), 400,
                              error_type="invalid_request_error")
    assert err["param"] == param
    assert param.split(".")[0] in err["message"]


async def test_n_out_of_range_message_is_clear(api_client: Any) -> None:
    err = assert_openai_error(
        await api_client.post("/v1/chat/completions", json=chat_body(model="planner", n=30)), 400)
    assert "n must be between 1 and 16" in err["message"]


async def test_bad_tool_input_never_reaches_the_backend(api_client: Any,
                                                        api_backend: FakeBackend) -> None:
    before = len(api_backend.requests)
    for fields, _ in BAD_CHAT_FIELDS:
        await api_client.post("/v1/chat/completions", json={**chat_body(model="planner"), **fields})
    assert len(api_backend.requests) == before


async def test_top_logprobs_without_logprobs_is_400(api_client: Any) -> None:
    resp = await api_client.post("/v1/chat/completions",
                                 json=chat_body(model="planner", top_logprobs=3))
    assert "requires logprobs" in assert_openai_error(resp, 400)["message"]


BAD_COMPLETION_FIELDS = [
    ({"echo": True}, "echo"),
    ({"logprobs": 6}, "logprobs"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"best_of": 3}, "best_of"),
    ({"suffix": "tail"}, "suffix"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_COMPLETION_FIELDS)
async def test_bad_completion_fields_are_400(api_client: Any, fields: dict[str, Any],
                                             param: str) -> None:
    body = {"model": "coder", "prompt": "x", **fields}
    err = assert_openai_error(await api_client.post("/v1/completions", json=body), 400)
    assert err["param"] == param


async def test_token_ids_outside_vocab_are_400(api_client: Any) -> None:
    resp = await api_client.post("/v1/completions",
                                 json={"model": "coder", "prompt": [1, 10_000_000]})
    assert_openai_error(resp, 400, param="prompt")


async def test_prompt_longer_than_context_is_400(api_client: Any, api_backend: FakeBackend) -> None:
    long_text = "word " * 600  # > 512 tokens
    resp = await api_client.post("/v1/chat/completions", json=chat_body(long_text, model="planner"))
    err = assert_openai_error(resp, 400, code="context_length_exceeded", param="messages")
    assert "512" in err["message"]
    resp = await api_client.post("/v1/completions", json={"model": "coder", "prompt": [7] * 512})
    assert_openai_error(resp, 400, code="context_length_exceeded", param="prompt")
    assert api_backend.requests == []


async def test_max_tokens_past_context_is_400(api_client: Any, api_backend: FakeBackend) -> None:
    resp = await api_client.post("/v1/completions",
                                 json={"model": "coder", "prompt": [7] * 500, "max_tokens": 13})
    err = assert_openai_error(resp, 400, code="context_length_exceeded", param="max_tokens")
    assert "513" in err["message"]
    ok = await api_client.post("/v1/completions",
                               json={"model": "coder", "prompt": [7] * 500, "max_tokens": 12})
    assert ok.status_code == 200
    # Without max_tokens the request gets what is left of the window.
    await api_client.post("/v1/completions", json={"model": "coder", "prompt": [7] * 500})
    assert api_backend.requests[-1].sampling.max_tokens == 12


async def test_backend_error_keeps_its_status() -> None:
    backend = FakeBackend()
    backend.fail_with = ServingError("no decode replica for role planner", status_code=503)
    app, _ = make_app(backend)
    async with http_client(app) as client:
        for stream in (False, True):
            resp = await client.post("/v1/chat/completions",
                                     json=chat_body(model="planner", stream=stream))
            err = assert_openai_error(resp, 503, error_type="server_error")
            assert "no decode replica" in err["message"]
    assert len(backend.closed_early) == 2


async def test_backend_error_mid_stream_becomes_error_event() -> None:
    backend = FakeBackend()
    backend.fail_after_deltas = 2
    backend.fail_with = ServingError("decode replica died", status_code=502)
    app, _ = make_app(backend)
    async with http_client(app) as client:
        resp = await client.post("/v1/chat/completions",
                                 json=chat_body(model="planner", stream=True))
        assert resp.status_code == 200
        events = [e for e in resp.text.split("\n\n") if e]
        assert '"error"' in events[-2] and "decode replica died" in events[-2]
        assert events[-1] == "data: [DONE]"
        resp = await client.post("/v1/chat/completions", json=chat_body(model="planner"))
        assert_openai_error(resp, 502)


class _Boom(Exception):
    pass


async def test_unexpected_exception_is_generic_500() -> None:
    backend = FakeBackend()
    backend.fail_with = _Boom("secret internal detail /etc/passwd")
    app, _ = make_app(backend)
    async with http_client(app) as client:
        resp = await client.post("/v1/chat/completions", json=chat_body(model="planner"))
        err = assert_openai_error(resp, 500, error_type="server_error")
        assert "secret" not in resp.text
        assert err["message"] == "The server had an error while processing your request."
        # The app keeps serving after it.
        backend.fail_with = None
        assert (await client.post("/v1/chat/completions",
                                  json=chat_body(model="planner"))).status_code == 200


async def test_unknown_path_and_method_are_openai_shaped(api_client: Any) -> None:
    assert_openai_error(await api_client.get("/v1/nothing"), 404)
    assert_openai_error(await api_client.get("/v1/chat/completions"), 405)


async def test_union_field_errors_name_the_field_not_the_member(api_client: Any) -> None:
    image = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    resp = await api_client.post("/v1/chat/completions", json={
        "model": "planner", "messages": [{"role": "user", "content": image}]})
    assert assert_openai_error(resp, 400)["param"] == "messages.0.content"
    resp = await api_client.post("/v1/completions", json={"model": "coder", "prompt": {"a": 1}})
    assert assert_openai_error(resp, 400)["param"] == "prompt"
