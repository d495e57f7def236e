"""Tools and structured output at the ingress, through vLLM's own OpenAI layer.

Runs in the ingress process. What a chat request's ``tools``, ``tool_choice`` and
``response_format`` mean for
1. the prompt: the role suffix lists the tools (contract/prompt_layout.py), after the shared
   conversation, so roles with different tools still share its prefix;
2. sampling: a structured-output constraint the decode engine applies to every token it
   samples (the prefill engine samples nothing that is kept). tool_choice "required" or a named
   function gets vLLM's hermes structural tag, so the output is always a well-formed call to a
   listed tool with schema-valid arguments; "auto" gets the same tag behind the ``<tool_call>``
   trigger (free text until the model opens a call); response_format maps to a JSON schema or
   JSON object;
3. the answer: vLLM's ``hermes`` tool parser turns the decoder's text into ``tool_calls``,
   whole or streamed. Hermes because the base's ChatML has no tool syntax of its own and the
   role decoders are trained to write Hermes ``<tool_call>`` blocks (training uses the same
   layout module).

Bad input is a 400 naming the field, raised before anything reaches an engine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from contract.prompt_layout import Turn, assistant_text, tool_result_text
from contract.wire import ServingError, StructuredOutput
from router_service.openai_schema import ChatCompletionRequest, ChatMessage

TOOL_PARSER = "hermes"
# Arguments are constrained by each tool's parameters schema, not only the call's framing.
TOOL_STRICT_LEVEL = "parameter"


@dataclass(frozen=True)
class ParsedChoice:
    content: str | None
    tool_calls: list[Any]  # vLLM FunctionCall (id, name, arguments)


class ChoiceParser:
    """One choice's tool-call parser (vLLM's parsers keep state while streaming)."""

    def __init__(self, parser: Any, request: Any, parallel: bool) -> None:
        self._parser = parser
        self._request = request
        self._parallel = parallel

    def delta(self, text: str, token_ids: Sequence[int], finished: bool) -> Any:
        """A vLLM DeltaMessage (content and/or tool_calls) for new text, or None."""
        # prompt_token_ids only tell vLLM whether a reasoning block is still open at the end
        # of the prompt; with no reasoning parser any list marks it closed, which starts the
        # tool-call phase (None would leave the text as plain content).
        message = self._parser.parse_delta(text, list(token_ids), self._request,
                                           prompt_token_ids=[], finished=finished)
        if message is not None and message.tool_calls and not self._parallel:
            message.tool_calls = [c for c in message.tool_calls if c.index == 0]
        return message

    def whole(self, text: str) -> ParsedChoice:
        _, content, calls = self._parser.parse(text, self._request, enable_auto_tools=True)
        calls = list(calls or [])
        if not self._parallel:
            calls = calls[:1]
        return ParsedChoice(content if content else (None if calls else text), calls)


@dataclass(frozen=True)
class ToolPlan:
    """What tools and response_format do to one request (``plan_tools``)."""

    rendered_tools: list[dict[str, Any]] | None  # listed in the role suffix; None: none
    structured_output: StructuredOutput | None
    named: bool  # a named tool_choice: OpenAI's finish_reason stays "stop"
    _parser_class: Any = None
    _vllm_request: Any = None
    _tokenizer: Any = None
    _parallel: bool = True

    @property
    def parses_tools(self) -> bool:
        return self._parser_class is not None

    def parser(self) -> ChoiceParser | None:
        if self._parser_class is None:
            return None
        parser = self._parser_class(self._tokenizer, self._vllm_request.tools)
        return ChoiceParser(parser, self._vllm_request, self._parallel)


NO_TOOLS = ToolPlan(None, None, False)


def plan_tools(body: ChatCompletionRequest, tokenizer: Any) -> ToolPlan:
    check_tool_history(body.messages)
    structured = _response_format(body)
    choice = body.effective_tool_choice()
    if not body.tools:
        if choice != "none":
            raise ServingError("tool_choice needs tools: send `tools` or drop `tool_choice`.",
                               param="tool_choice")
        return ToolPlan(None, structured, False)
    for i, tool in enumerate(body.tools):
        _check_schema(tool.function.parameters, f"tools.{i}.function.parameters")
    names = [t.function.name for t in body.tools]
    named = not isinstance(choice, str)
    if named and choice.function.name not in names:
        raise ServingError(f"tool_choice names `{choice.function.name}`, which is not in "
                           f"tools ({', '.join(names)}).", param="tool_choice")
    if choice == "none":
        return ToolPlan(None, structured, False)
    if structured is not None:
        raise ServingError("response_format cannot be combined with tools here unless "
                           "tool_choice is \"none\": a tool call is not the requested JSON.",
                           param="response_format")
    try:
        return _vllm_plan(body, tokenizer, named)
    except ValueError as exc:  # vLLM's own request validation (pydantic) or grammar building
        raise ServingError(f"Invalid value for 'tools': {exc}", param="tools") from None


def _vllm_plan(body: ChatCompletionRequest, tokenizer: Any, named: bool) -> ToolPlan:
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionRequest as VllmChatRequest,
    )
    from vllm.parser import ParserManager

    assert body.tools is not None
    tools = [t.model_dump(mode="json", exclude_none=True) for t in body.tools]
    choice = body.effective_tool_choice()
    request = VllmChatRequest(
        model="role", messages=[{"role": "user", "content": ""}], tools=tools,
        tool_choice=choice if isinstance(choice, str) else choice.model_dump(mode="json"),
        parallel_tool_calls=body.parallel_tool_calls is not False)
    parser_class = ParserManager.get_parser(tool_parser_name=TOOL_PARSER, enable_auto_tools=True,
                                            tokenizer=tokenizer,
                                            tool_strict_level=TOOL_STRICT_LEVEL)
    # adjust_request writes the constraint vLLM would use into the request.
    request = parser_class(tokenizer, request.tools).adjust_request(request)
    so = request.structured_outputs
    structured = None
    if so is not None and so.structural_tag:
        structured = StructuredOutput(structural_tag=so.structural_tag)
    elif so is not None and so.json is not None:
        structured = StructuredOutput(json=json.dumps(so.json))
    return ToolPlan(tools, structured, named, parser_class, request, tokenizer,
                    body.parallel_tool_calls is not False)


def _response_format(body: ChatCompletionRequest) -> StructuredOutput | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return StructuredOutput(json_object=True)
    schema = fmt.json_schema.json_schema if fmt.json_schema is not None else None
    if schema is None:
        raise ServingError("response_format json_schema needs `json_schema.schema`.",
                           param="response_format.json_schema")
    _check_schema(schema, "response_format.json_schema.schema")
    return StructuredOutput(json=json.dumps(schema))


def _check_schema(schema: Any, param: str) -> None:
    if schema is None:
        return
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ServingError(f"Invalid value for '{param}': not a JSON Schema ({exc.message}).",
                           param=param) from None


def conversation_turns(messages: Sequence[ChatMessage]) -> list[Turn]:
    """The OpenAI history as the shared layout renders it: an assistant's tool calls in its
    text, a tool result as a ``tool`` turn (contract/prompt_layout.py)."""
    turns = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            calls = [(c.function.name, c.function.arguments) for c in m.tool_calls]
            turns.append(Turn("assistant", assistant_text(m.text(), calls)))
        elif m.role == "tool":
            turns.append(Turn("tool", tool_result_text(m.text())))
        else:
            turns.append(Turn(m.role, m.text()))
    return turns


def check_tool_history(messages: Sequence[ChatMessage]) -> None:
    """Every tool message answers a call that an earlier assistant message made."""
    called: set[str] = set()
    for i, m in enumerate(messages):
        if m.role == "assistant" and m.tool_calls:
            called.update(c.id for c in m.tool_calls)
        elif m.role == "tool":
            param = f"messages.{i}.tool_call_id"
            if not m.tool_call_id:
                raise ServingError(f"'{param}' is missing: a tool message names the call it "
                                   "answers.", param=param)
            if m.tool_call_id not in called:
                raise ServingError(f"Invalid value for '{param}': `{m.tool_call_id}` answers no "
                                   "tool call of an earlier assistant message.", param=param)
        elif m.tool_calls:
            param = f"messages.{i}.tool_calls"
            raise ServingError(f"Invalid value for '{param}': only assistant messages carry "
                               "tool calls.", param=param)
