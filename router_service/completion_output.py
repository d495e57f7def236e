"""Turns the backend's GenerationDelta stream into OpenAI responses: one body, or SSE chunks.

Runs in the ingress process. The one rule that matters beyond formatting: the backend's
iterator is ALWAYS closed when we stop reading it (done, error, or client gone), because
closing it is how the backend learns to abort the request on its prefill and decode engines.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Send

from contract.wire import GenerationDelta, TokenLogprob
from router_service.errors import sse_error_event
from router_service.openai_schema import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatResponseMessage,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    FinishReason,
    FunctionCall,
    PromptTokensDetails,
    ToolCall,
    TopLogprob,
    Usage,
)
from router_service.tool_calls import NO_TOOLS, ChoiceParser, ToolPlan

log = logging.getLogger(__name__)

DONE_EVENT = "data: [DONE]\n\n"


async def close_backend_stream(deltas: AsyncIterator[GenerationDelta]) -> None:
    """Close the backend iterator even while our own task is being cancelled."""
    aclose = getattr(deltas, "aclose", None)
    if aclose is None:
        return
    # Starlette cancels a disconnected stream through an anyio scope, which would also cancel
    # any await in our cleanup; the shield lets the backend's abort path actually run.
    with anyio.CancelScope(shield=True):
        try:
            await aclose()
        except Exception:
            log.warning("closing the backend stream failed", exc_info=True)


@dataclass(frozen=True)
class RequestMeta:
    request_id: str
    model: str
    prompt_len: int
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class ChoiceOutput:
    """One choice's output so far."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    cached_prompt_tokens: int | None = None

    def add(self, delta: GenerationDelta) -> None:
        self.text += delta.text
        self.token_ids.extend(delta.token_ids)
        if delta.logprobs:
            self.logprobs.extend(delta.logprobs)
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
        if delta.num_cached_prompt_tokens is not None:
            self.cached_prompt_tokens = delta.num_cached_prompt_tokens


@dataclass
class Collected:
    """Every choice's output so far (n > 1: deltas of the choices interleave)."""

    n: int = 1
    choices: dict[int, ChoiceOutput] = field(default_factory=dict)

    def add(self, delta: GenerationDelta) -> ChoiceOutput:
        choice = self.choices.setdefault(delta.index, ChoiceOutput())
        choice.add(delta)
        return choice

    def done(self) -> bool:
        return sum(c.finish_reason is not None for c in self.choices.values()) >= self.n

    def ordered(self) -> list[tuple[int, ChoiceOutput]]:
        return [(i, self.choices.get(i, ChoiceOutput())) for i in range(self.n)]

    def usage(self, prompt_len: int) -> Usage:
        tokens = sum(len(c.token_ids) for c in self.choices.values())
        # Choice 0's prefill is the one that found the session's cache (later choices' prefills
        # hit what it left): it says whether routing kept the session local.
        cached = self.choices[0].cached_prompt_tokens if 0 in self.choices else None
        details = None if cached is None else PromptTokensDetails(cached_tokens=cached)
        return Usage(prompt_tokens=prompt_len, completion_tokens=tokens,
                     total_tokens=prompt_len + tokens, prompt_tokens_details=details)


async def collect(first: GenerationDelta | None, deltas: AsyncIterator[GenerationDelta],
                  n: int = 1) -> Collected:
    out = Collected(n)
    try:
        delta = first
        while delta is not None:
            out.add(delta)
            if out.done():
                break
            delta = await anext(deltas, None)
    finally:
        await close_backend_stream(deltas)
    return out


# ---- logprobs in the two OpenAI shapes ------------------------------------------------------

def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs(items: Sequence[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(content=[
        ChatTokenLogprob(
            token=lp.token, logprob=lp.logprob, bytes=_utf8(lp.token),
            top_logprobs=[TopLogprob(token=t, logprob=v, bytes=_utf8(t)) for t, v in lp.top],
        )
        for lp in items
    ])


def completion_logprobs(items: Sequence[TokenLogprob], text_offset: int = 0) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for lp in items:
        out.tokens.append(lp.token)
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append(dict(lp.top))
        out.text_offset.append(text_offset)
        text_offset += len(lp.token)
    return out


def _finish(reason: str | None, called_tools: bool = False, named: bool = False) -> FinishReason:
    """OpenAI's finish_reason: a backend that ends without saying why ended the way EOS ends
    a sequence; a sequence that ended in tool calls says so, unless the request named the
    tool (then OpenAI, and vLLM, say "stop")."""
    if reason == "length":
        return "length"
    return "tool_calls" if called_tools and not named else "stop"


# ---- whole responses ------------------------------------------------------------------------

def chat_response(meta: RequestMeta, out: Collected, want_logprobs: bool,
                  tools: ToolPlan = NO_TOOLS) -> ChatCompletionResponse:
    choices = []
    for index, c in out.ordered():
        content: str | None = c.text
        calls: list[ToolCall] | None = None
        parser = tools.parser()
        if parser is not None:
            parsed = parser.whole(c.text)
            content = parsed.content
            calls = [ToolCall(id=f.id or ToolCall().id,
                              function=FunctionCall(name=f.name, arguments=f.arguments))
                     for f in parsed.tool_calls] or None
        choices.append(ChatChoice(
            index=index,
            message=ChatResponseMessage(content=content, tool_calls=calls),
            logprobs=chat_logprobs(c.logprobs) if want_logprobs else None,
            finish_reason=_finish(c.finish_reason, bool(calls), tools.named),
        ))
    return ChatCompletionResponse(id=meta.request_id, created=meta.created, model=meta.model,
                                  choices=choices, usage=out.usage(meta.prompt_len))


def completion_response(meta: RequestMeta, out: Collected,
                        want_logprobs: bool) -> CompletionResponse:
    choices = [
        CompletionChoice(
            index=index, text=c.text,
            logprobs=completion_logprobs(c.logprobs) if want_logprobs else None,
            finish_reason=_finish(c.finish_reason),
        )
        for index, c in out.ordered()
    ]
    return CompletionResponse(id=meta.request_id, created=meta.created, model=meta.model,
                              choices=choices, usage=out.usage(meta.prompt_len))


# ---- streams --------------------------------------------------------------------------------

class ChunkRenderer(Protocol):
    def opening(self, index: int) -> BaseModel | None: ...

    def chunk(self, delta: GenerationDelta, text_offset: int) -> BaseModel | None: ...

    def closing(self, index: int, finish_reason: str | None) -> BaseModel | None: ...

    def usage(self, usage: Usage) -> BaseModel: ...


@dataclass
class ChatChunks:
    meta: RequestMeta
    want_logprobs: bool
    tools: ToolPlan = NO_TOOLS
    _parsers: dict[int, ChoiceParser] = field(default_factory=dict)
    _called: set[int] = field(default_factory=set)  # choices that streamed a tool call

    def _wrap(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> BaseModel:
        m = self.meta
        return ChatCompletionChunk(id=m.request_id, created=m.created, model=m.model,
                                   choices=choices, usage=usage)

    def opening(self, index: int) -> BaseModel | None:
        # OpenAI's first chunk of a choice names the speaker; some clients build the message
        # from it.
        return self._wrap([ChatChunkChoice(index=index,
                                           delta=ChatDelta(role="assistant", content=""),
                                           logprobs=None, finish_reason=None)])

    def chunk(self, delta: GenerationDelta, text_offset: int) -> BaseModel | None:
        logprobs = (chat_logprobs(delta.logprobs or ())
                    if self.want_logprobs and delta.logprobs else None)
        message = ChatDelta(content=delta.text)
        parser = self._parser(delta.index)
        if parser is not None:
            parsed = parser.delta(delta.text, delta.token_ids, delta.finish_reason is not None)
            message = ChatDelta(content=parsed.content if parsed else None,
                                tool_calls=(parsed.tool_calls or None) if parsed else None)
            if message.tool_calls:
                self._called.add(delta.index)
        if not message.content and not message.tool_calls and logprobs is None:
            return None  # nothing new, or the parser holds text back (a call may be starting)
        return self._wrap([ChatChunkChoice(index=delta.index, delta=message, logprobs=logprobs,
                                           finish_reason=None)])

    def closing(self, index: int, finish_reason: str | None) -> BaseModel | None:
        finish = _finish(finish_reason, index in self._called, self.tools.named)
        return self._wrap([ChatChunkChoice(index=index, delta=ChatDelta(), logprobs=None,
                                           finish_reason=finish)])

    def usage(self, usage: Usage) -> BaseModel:
        return self._wrap([], usage)

    def _parser(self, index: int) -> ChoiceParser | None:
        if index not in self._parsers:
            parser = self.tools.parser()
            if parser is None:
                return None
            self._parsers[index] = parser
        return self._parsers[index]


@dataclass(frozen=True)
class CompletionChunks:
    meta: RequestMeta
    want_logprobs: bool

    def _wrap(self, choices: list[CompletionChoice], usage: Usage | None = None) -> BaseModel:
        m = self.meta
        return CompletionResponse(id=m.request_id, created=m.created, model=m.model,
                                  choices=choices, usage=usage)

    def opening(self, index: int) -> BaseModel | None:
        return None

    def chunk(self, delta: GenerationDelta, text_offset: int) -> BaseModel | None:
        logprobs = (completion_logprobs(delta.logprobs or (), text_offset)
                    if self.want_logprobs and delta.logprobs else None)
        if not delta.text and logprobs is None:
            return None
        return self._wrap([CompletionChoice(index=delta.index, text=delta.text,
                                            logprobs=logprobs, finish_reason=None)])

    def closing(self, index: int, finish_reason: str | None) -> BaseModel | None:
        return self._wrap([CompletionChoice(index=index, text="", logprobs=None,
                                            finish_reason=_finish(finish_reason))])

    def usage(self, usage: Usage) -> BaseModel:
        return self._wrap([], usage)


def sse(model: BaseModel) -> str:
    data = model.model_dump(mode="json")
    # Keep chunks shaped like OpenAI's: no "usage" key until the usage chunk, and deltas
    # without null fields (some clients take a null role as a new message, or concatenate a
    # null tool name).
    if data.get("usage") is None:
        data.pop("usage", None)
    for choice in data.get("choices", ()):
        if "delta" in choice:
            choice["delta"] = _without_nulls(choice["delta"])
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


async def stream_events(first: GenerationDelta | None, deltas: AsyncIterator[GenerationDelta],
                        render: ChunkRenderer, prompt_len: int, include_usage: bool,
                        n: int = 1) -> AsyncIterator[str]:
    """SSE events for one request; an error after the 200 went out becomes an error event."""
    out = Collected(n)
    try:
        for index in range(n):
            opening = render.opening(index)
            if opening is not None:
                yield sse(opening)
        delta = first
        while delta is not None:
            before = out.choices.get(delta.index)
            offset = len(before.text) if before else 0
            choice = out.add(delta)
            chunk = render.chunk(delta, offset)
            if chunk is not None:
                yield sse(chunk)
            if delta.finish_reason:
                closing = render.closing(delta.index, choice.finish_reason)
                if closing is not None:
                    yield sse(closing)
            if out.done():
                break
            delta = await anext(deltas, None)
        for index, choice in out.ordered():  # a backend that ended without saying why
            if choice.finish_reason is None:
                closing = render.closing(index, None)
                if closing is not None:
                    yield sse(closing)
        if include_usage:
            yield sse(render.usage(out.usage(prompt_len)))
        yield DONE_EVENT
    except Exception as exc:  # the status line is already sent: report inside the stream
        log.warning("stream failed after it started: %r", exc)
        yield sse_error_event(exc)
        yield DONE_EVENT
    finally:
        await close_backend_stream(deltas)


class SSEResponse(StreamingResponse):
    """A StreamingResponse that always closes its event generator, whatever ended the stream.

    Starlette stops iterating on a disconnect (cancellation, or an OSError from ``send`` under
    ASGI 2.4) without closing the generator; it would then be closed only whenever the garbage
    collector gets to it, and the backend would keep generating for nobody until then.
    """

    media_type = "text/event-stream"

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
