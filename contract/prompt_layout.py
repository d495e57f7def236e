"""The prompt layout that serving and training share: a conversation (tool calls and tool
results included) into prompt token ids, with the BASE model's tokenizer and chat template.

Runs in the ingress process and in training (training/ builds its examples with it, so a
decoder is trained on exactly the layout it is served with); pure Python over a transformers
tokenizer (no Ray, no vLLM).

The layout is what makes prefill sharing pay off. Every role's prompt is
``context tokens`` + ``role tokens``, where the context is the conversation rendered by the
chat template (the same for every role that sees the same messages) and the role tokens are
the role's instructions as a trailing system turn plus the assistant generation prompt. So
the context is a common token PREFIX across roles, and since a multi-turn agent workflow only
appends messages, each call's context extends the previous call's context: the prefill pool's
prefix cache hits on everything but the new turns and the short role suffix.

Tools keep that property. The chat template carried by the base (ChatML) knows no tools, so
the layout is ours, in the Hermes format that vLLM's ``hermes`` tool parser reads: a call is
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` in the assistant's text, a result
is a ``tool`` turn wrapping ``<tool_response>``, and the tool definitions go in the ROLE
suffix, after the shared conversation. Chat templates that put tools at the top would make
every role with its own tools a different prefix; here roles with different tools still share
the whole conversation.

Token-level prefixes need more than string prefixes: a BPE tokenizer may merge characters
across a boundary. So each message's rendering is tokenized on its own and the pieces are
concatenated; with a template that renders message k as a string extension of messages < k
(ChatML and most others), earlier calls' context tokens are then an exact prefix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


class ChatTokenizer(Protocol):
    """The slice of a transformers tokenizer used here."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class Turn:
    """One conversation message, already reduced to plain text."""

    role: str
    content: str


@dataclass(frozen=True)
class BuiltPrompt:
    token_ids: tuple[int, ...]
    # How many leading tokens are the shared conversation context (the rest is role-specific).
    context_len: int


TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n")
TOOLS_CLOSING = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def tools_text(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tool signatures as the role suffix lists them (OpenAI ``tools`` entries)."""
    return TOOLS_PREAMBLE + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools) + TOOLS_CLOSING


def role_suffix(instructions: str | None, tools: Sequence[Mapping[str, Any]] | None) -> str | None:
    """What follows the shared conversation for one role: its instructions, then its tools."""
    parts = [p for p in (instructions, tools_text(tools) if tools else None) if p]
    return "\n\n".join(parts) or None


def tool_call_text(name: str, arguments: str | Mapping[str, Any]) -> str:
    """One call as the model writes it; ``arguments`` as OpenAI sends them (JSON text) or
    parsed. Text that is not JSON stays as it came."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            pass
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f'<tool_call>\n{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {args}}}\n</tool_call>'


def assistant_text(content: str, calls: Sequence[tuple[str, str | Mapping[str, Any]]]) -> str:
    """An assistant turn of the history: its text, then each (name, arguments) call."""
    return "\n".join([content] * bool(content) + [tool_call_text(n, a) for n, a in calls])


def tool_result_text(content: str) -> str:
    return f"<tool_response>\n{content}\n</tool_response>"


class PromptTemplateError(ValueError):
    """The chat template refused the conversation (e.g. it demands alternating roles)."""


# OpenAI's newer "developer" role means what "system" means to the chat templates we serve.
_TEMPLATE_ROLE = {"developer": "system"}


class PromptBuilder:
    """Builds prompts for every role from one base tokenizer."""

    def __init__(self, tokenizer: ChatTokenizer) -> None:
        self._tok = tokenizer

    def chat_prompt(self, turns: Sequence[Turn], instructions: str | None = None) -> BuiltPrompt:
        messages = [{"role": _TEMPLATE_ROLE.get(t.role, t.role), "content": t.content}
                    for t in turns]
        if not messages:
            raise PromptTemplateError("messages must not be empty")
        context_text = [self._render(messages[: k + 1], generation_prompt=False)
                        for k in range(len(messages))]
        full_text = self._render_with_role(messages, instructions)
        if not all(_extends(longer, shorter)
                   for shorter, longer in zip([""] + context_text, context_text + [full_text])):
            # A template that rewrites earlier turns (e.g. drops old reasoning) cannot give a
            # stable prefix; tokenize it whole and accept fewer prefix-cache hits.
            log.debug("chat template is not prefix-stable; tokenizing the prompt as one piece")
            whole = self._encode(full_text)
            return BuiltPrompt(tuple(whole), context_len=len(self._encode(context_text[-1])))
        ids: list[int] = []
        previous = ""
        for text in context_text:
            ids.extend(self._encode(text[len(previous):]))
            previous = text
        context_len = len(ids)
        ids.extend(self._encode(full_text[len(previous):]))
        return BuiltPrompt(tuple(ids), context_len=context_len)

    def completion_prompt(self, prompt: str | Sequence[int]) -> BuiltPrompt:
        """A raw completion prompt: a string is tokenized as is; token ids pass through."""
        if isinstance(prompt, str):
            ids = tuple(self._tok.encode(prompt, add_special_tokens=True))
        else:
            ids = tuple(int(t) for t in prompt)
        return BuiltPrompt(ids, context_len=len(ids))

    def _render_with_role(self, messages: list[dict[str, str]], instructions: str | None) -> str:
        if not instructions:
            return self._render(messages, generation_prompt=True)
        try:
            return self._render(messages + [{"role": "system", "content": instructions}],
                                generation_prompt=True)
        except PromptTemplateError:
            # Some templates allow "system" only first; a user turn still keeps the prefix.
            return self._render(messages + [{"role": "user", "content": instructions}],
                                generation_prompt=True)

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        try:
            text = self._tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as exc:  # jinja raises its own TemplateError subclasses
            raise PromptTemplateError(f"the chat template rejected the messages: {exc}") from exc
        return str(text)

    def _encode(self, text: str) -> list[int]:
        # The template already wrote any BOS it wants; adding special tokens would duplicate it.
        return list(self._tok.encode(text, add_special_tokens=False)) if text else []


def _extends(longer: str, shorter: str) -> bool:
    return longer.startswith(shorter)
