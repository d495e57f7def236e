"""The agent API on real engines (tiny random models; one shared prefill engine and one
multi-LoRA decode engine hosting four roles), through the official openai client:
tool calls forced by tool_choice (named, required) are valid calls of a listed tool with
schema-valid arguments, whole and streamed; auto goes through the same grammar path and its
stream assembles to the whole answer; response_format json_schema output validates; n=2 gives
two choices, each decoded from the base model's KV (greedy: both equal the n=1 answer); and a
four-role session where every role has its own tools keeps every full block of the shared
conversation in the prefill cache."""

from __future__ import annotations

import functools
import json

import jsonschema
import openai
import pytest

from bench.running_app import running_app, tiny_engine, tiny_lora_adapter, tiny_models

pytestmark = pytest.mark.slow

BLOCK = 32
ROLES = ("planner", "coder", "tool_caller", "critic")
WEATHER = {"type": "function", "function": {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time",
    "parameters": {"type": "object", "properties": {"hour": {"type": "integer", "minimum": 0,
                                                             "maximum": 23}},
                   "required": ["hour"], "additionalProperties": False}}}
ROLE_TOOLS = {
    "planner": [TIME],
    "coder": [{"type": "function", "function": {"name": "run_python", "parameters": {
        "type": "object", "properties": {"code": {"type": "string", "maxLength": 20}},
        "required": ["code"]}}}],
    "tool_caller": [WEATHER, TIME],
    "critic": [{"type": "function", "function": {"name": "flag", "parameters": {
        "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}}}],
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"]
           for tools in ROLE_TOOLS.values() for t in tools}


@pytest.fixture(scope="module")
def client():
    base, _ = tiny_models()
    engine = tiny_engine(block_size=BLOCK, max_model_len=2048)
    args = {
        "base_model": base,
        "prefill_pools": {"shared": {"engine": engine}},
        "lora_pool": {"engine": engine, "max_lora_rank": 8, "max_loras": 4},
        "roles": [{"name": r, "lora_adapter": tiny_lora_adapter(base, f"agent-{r}", i),
                   "default_max_tokens": 24}
                  for i, r in enumerate(ROLES)],
    }
    with running_app(args) as app:
        sdk = openai.OpenAI(base_url=f"{app.url}/v1", api_key="unused", max_retries=0,
                            timeout=300)
        yield sdk


@functools.lru_cache(maxsize=1)
def no_whitespace() -> dict[str, int]:
    """logit_bias that bans whitespace-only tokens. JSON grammars allow any run of whitespace
    between tokens, and a random model at temperature 0 can pick a space forever; banned, the
    grammar has to produce the JSON itself, whose strings and numbers the schemas bound."""
    from tests.api_fixtures import smollm2_tokenizer

    tok = smollm2_tokenizer()
    return {str(i): -100 for i in range(len(tok)) if not tok.decode([i]).strip()}


def _valid(call) -> None:
    assert call.function.name in SCHEMAS, call.function.name
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def _stream(sdk, **kw) -> tuple[str, list[tuple[str, str]], str | None]:
    content, calls, finish = "", {}, None
    for chunk in sdk.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            content += c.delta.content or ""
            for d in c.delta.tool_calls or ():
                name, args = calls.get(d.index, ("", ""))
                calls[d.index] = (name + (d.function.name or ""), args + (d.function.arguments or ""))
            finish = c.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


def test_named_tool_choice_is_a_valid_call_whole_and_streamed(client) -> None:
    kw = dict(model="tool_caller", messages=ASK, tools=[WEATHER, TIME], temperature=0,
              max_tokens=64, tool_choice={"type": "function", "function": {"name": "get_time"}},
              logit_bias=no_whitespace())
    resp = client.chat.completions.create(**kw)
    [call] = resp.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    _valid(call)
    assert resp.choices[0].finish_reason == "stop"  # OpenAI's, for a named tool
    content, calls, finish = _stream(client, **kw)
    # Streamed arguments are the model's text; whole ones are re-serialized JSON: same value.
    assert [(n, json.loads(a)) for n, a in calls] == [
        (call.function.name, json.loads(call.function.arguments))] and finish == "stop"


def test_required_tool_choice_is_a_valid_call(client) -> None:
    resp = client.chat.completions.create(
        model="tool_caller", messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
        temperature=0, max_tokens=64, parallel_tool_calls=False, logit_bias=no_whitespace())
    calls = resp.choices[0].message.tool_calls
    assert len(calls) == 1
    _valid(calls[0])
    assert resp.choices[0].finish_reason == "tool_calls"


def test_auto_tool_choice_runs_the_grammar_and_streams_the_same_answer(client) -> None:
    kw = dict(model="tool_caller", messages=ASK, tools=[WEATHER], temperature=0, max_tokens=32)
    resp = client.chat.completions.create(**kw)
    choice = resp.choices[0]
    for call in choice.message.tool_calls or ():
        _valid(call)
    content, calls, finish = _stream(client, **kw)
    assert content == (choice.message.content or "")
    assert [(n, json.loads(a)) for n, a in calls] == [
        (c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or ()]
    assert finish == choice.finish_reason


def test_json_schema_output_validates(client) -> None:
    schema = {"type": "object", "properties": {
        "ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["ok", "n"], "additionalProperties": False}
    resp = client.chat.completions.create(
        model="planner", messages=ASK, temperature=0, max_tokens=64, logit_bias=no_whitespace(),
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    assert resp.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(resp.choices[0].message.content), schema)


def test_two_choices_each_decode_from_base_kv(client) -> None:
    kw = dict(model="coder", messages=ASK, temperature=0, max_tokens=8,
              extra_body={"ignore_eos": True})
    one = client.chat.completions.create(**kw).choices[0].message.content
    two = client.chat.completions.create(n=2, **kw)
    assert [c.index for c in two.choices] == [0, 1]
    # Greedy: the second choice (prefilled on a prefix-cache hit, its own KV pull) decodes
    # exactly what the first and an n=1 request decode.
    assert [c.message.content for c in two.choices] == [one, one]
    assert two.usage.completion_tokens == 16


def _expected_prompt(history: list[dict], tools: list[dict]) -> tuple[int, ...]:
    """The prompt the ingress builds (contract/prompt_layout.py, the layout training uses)."""
    from contract.prompt_layout import PromptBuilder, role_suffix
    from router_service.openai_schema import ChatCompletionRequest
    from router_service.tool_calls import conversation_turns
    from tests.api_fixtures import smollm2_tokenizer

    body = ChatCompletionRequest.model_validate({"messages": history})
    return PromptBuilder(smollm2_tokenizer()).chat_prompt(
        conversation_turns(body.messages), role_suffix(None, tools)).token_ids


def _best_cached(prompt: tuple[int, ...], earlier: list[tuple[int, ...]]) -> int:
    """What a prefix cache of BLOCK-token blocks can serve at best (never the last token)."""
    from bench.tool_layout_sharing import best_cached

    return best_cached(prompt, earlier, BLOCK)


def test_roles_with_their_own_tools_keep_the_shared_prefix_cached(client) -> None:
    """Three turns, each calling all four roles with their own tools over one growing
    conversation: every call gets from the prefill cache exactly what the workload allows
    (whole blocks of its longest common prefix with an earlier call)."""
    session = {"x-session-id": "agents-with-tools"}
    history = [{"role": "user", "content": "Plan a two-day trip to Paris: weather, a script to "
                "compare hotel prices, and a review of the plan. " * 3}]
    seen: list[tuple[int, ...]] = []
    cached = best = total = 0
    for turn in range(3):
        for role in ROLES:
            expected = _expected_prompt(history, ROLE_TOOLS[role])
            resp = client.chat.completions.create(
                model=role, messages=history, tools=ROLE_TOOLS[role], max_tokens=12,
                temperature=0, extra_headers=session, extra_body={"ignore_eos": True})
            usage = resp.usage
            assert usage.prompt_tokens == len(expected)
            assert usage.prompt_tokens_details.cached_tokens == _best_cached(expected, seen)
            cached += usage.prompt_tokens_details.cached_tokens
            best += _best_cached(expected, seen)
            total += len(expected)
            seen.append(expected)
            message = resp.choices[0].message
            history.append({"role": "assistant", "content": f"[{role}] {message.content or ''}"})
        history.append({"role": "user", "content": f"Turn {turn + 2}: go on with the plan."})
    print(f"four roles with their own tools, 3 turns, 12 calls: {total} prompt tokens, "
          f"{cached} from the prefill cache (hit ratio {cached / total:.3f}; workload best "
          f"{best / total:.3f} with {BLOCK}-token blocks)")
