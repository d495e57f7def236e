"""Turns a conversation into prompt token ids with the BASE model's tokenizer and chat template.

Runs in the ingress process; pure Python over a transformers tokenizer (no Ray, no vLLM).

The layout is what makes prefill sharing pay off. Every role's prompt is
``context tokens`` + ``role tokens``, where the context is the conversation rendered by the
chat template (the same for every role that sees the same messages) and the role tokens are
the role's instructions as a trailing system turn plus the assistant generation prompt. So
the context is a common token PREFIX across roles, and since a multi-turn agent workflow only
appends messages, each call's context extends the previous call's context: the prefill pool's
prefix cache hits on everything but the new turns and the short role suffix.

Token-level prefixes need more than string prefixes: a BPE tokenizer may merge characters
across a boundary. So each message's rendering is tokenized on its own and the pieces are
concatenated; with a template that renders message k as a string extension of messages < k
(ChatML and most others), earlier calls' context tokens are then an exact prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
