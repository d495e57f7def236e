"""Real agent frameworks, unchanged, against the ingress's OpenAI-compatible chat endpoint.

LangGraph's prebuilt ReAct agent (over langchain-openai's ChatOpenAI, plain and streaming) and
the OpenAI Agents SDK (over its Chat Completions model) each talk to the app served by a real
uvicorn on 127.0.0.1, with a scripted fake backend behind it (no engines, no Ray). The fake
answers the first turn with a Hermes ``<tool_call>`` and, once the prompt carries the
``<tool_response>``, with text quoting it. Passing proves the whole loop works for these
clients: the tool schema they send is accepted and rendered, the model's tool call comes back
as OpenAI ``tool_calls`` they parse and execute (the Python tool really runs, with the parsed
argument), the tool result they send back is rendered into the next prompt, and the final
answer reaches them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from langchain_core.messages import AIMessage, ToolMessage
from langchain_openai import ChatOpenAI
from langgraph.prebuilt import create_react_agent
from openai import AsyncOpenAI

from bench.fake_backend import FakeBackend
from contract.roles import ServedRole
from router_service.backend import GenerationRequest
from tests.api_fixtures import make_app, served_on_loopback, smollm2_tokenizer

pytestmark = pytest.mark.timeout(60)

MODEL = "tool_caller"
QUESTION = "What is the weather in Paris?"
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
RESPONSE = re.compile(r"<tool_response>\n(.*?)\n</tool_response>", re.DOTALL)
# Room for the frameworks' tool schemas and instructions (the API tests' default is 512).
MAX_MODEL_LEN = 4096


def weather_text(city: str) -> str:
    return f"Sunny and 23 degrees in {city}"


def scripted_reply(request: GenerationRequest) -> str:
    """A tool call first; once a tool result is in the prompt, an answer quoting it."""
    prompt = smollm2_tokenizer().decode(list(request.prompt_token_ids))
    results = RESPONSE.findall(prompt)
    if results:
        return f"Here is the forecast: {results[-1].strip()}."
    return CALL


@pytest.fixture
def served() -> Iterator[tuple[str, FakeBackend]]:
    """The app (one tool-calling role) on a real socket; yields its /v1 URL and the fake."""
    backend = FakeBackend(reply=scripted_reply)
    app, _ = make_app(backend, roles=[ServedRole(MODEL, "You call tools.")],
                      max_model_len=MAX_MODEL_LEN)
    with served_on_loopback(app) as url:
        yield f"{url}/v1", backend


@pytest.fixture(autouse=True)
def _no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    # No network here: keep LangSmith and the Agents SDK's tracing exporter off.
    for var in ("LANGCHAIN_TRACING_V2", "LANGSMITH_TRACING", "LANGCHAIN_API_KEY",
                "LANGSMITH_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    set_tracing_disabled(True)


def _assert_tool_loop(backend: FakeBackend, calls: list[str]) -> None:
    assert calls == ["Paris"]
    # Two model turns: the tool call, then the answer with the tool result in its prompt.
    assert len(backend.requests) == 2
    second = smollm2_tokenizer().decode(list(backend.requests[1].prompt_token_ids))
    assert weather_text("Paris") in RESPONSE.findall(second)[-1]


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "streaming"])
def test_langgraph_react_agent_runs_the_tool(served, streaming: bool) -> None:
    base_url, backend = served
    calls: list[str] = []

    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(city)
        return weather_text(city)

    llm = ChatOpenAI(base_url=base_url, api_key="unused", model=MODEL, streaming=streaming,
                     max_retries=0, timeout=20)
    agent = create_react_agent(llm, [get_weather])
    result = agent.invoke({"messages": [("user", QUESTION)]})

    _assert_tool_loop(backend, calls)
    messages = result["messages"]
    tool_msgs = [m for m in messages if isinstance(m, ToolMessage)]
    assert [m.content for m in tool_msgs] == [weather_text("Paris")]
    [call] = [c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls
    assert weather_text("Paris") in final.content


async def test_openai_agents_sdk_runs_the_tool(served) -> None:
    base_url, backend = served
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(city)
        return weather_text(city)

    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=20)
    try:
        agent = Agent(name="weather", instructions="Answer weather questions with the tool.",
                      tools=[get_weather],
                      model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client))
        result = await Runner.run(agent, QUESTION)
    finally:
        await client.close()

    _assert_tool_loop(backend, calls)
    assert weather_text("Paris") in result.final_output
