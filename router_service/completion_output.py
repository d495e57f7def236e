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
from typing import Protocol

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
    PromptTokensDetails,
    TopLogprob,
    Usage,
)

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
class Collected:
    text: str = ""
    num_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    cached_prompt_tokens: int | None = None

    def add(self, delta: GenerationDelta) -> None:
        self.text += delta.text
        self.num_tokens += len(delta.token_ids)
        if delta.logprobs:
            self.logprobs.extend(delta.logprobs)
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
        if delta.num_cached_prompt_tokens is not None:
            self.cached_prompt_tokens = delta.num_cached_prompt_tokens

    def usage(self, prompt_len: int) -> Usage:
        details = (None if self.cached_prompt_tokens is None
                   else PromptTokensDetails(cached_tokens=self.cached_prompt_tokens))
        return Usage(prompt_tokens=prompt_len, completion_tokens=self.num_tokens,
                     total_tokens=prompt_len + self.num_tokens, prompt_tokens_details=details)


async def collect(first: GenerationDelta | None,
                  deltas: AsyncIterator[GenerationDelta]) -> Collected:
    out = Collected()
    try:
        delta = first
        while delta is not None:
            out.add(delta)
            if delta.finish_reason:
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


def _finish(reason: str | None) -> FinishReason:
    # A backend that ends without saying why ended the way EOS ends a sequence.
    return "length" if reason == "length" else "stop"


# ---- whole responses ------------------------------------------------------------------------

def chat_response(meta: RequestMeta, out: Collected, want_logprobs: bool) -> ChatCompletionResponse:
    choice = ChatChoice(
        message=ChatResponseMessage(content=out.text),
        logprobs=chat_logprobs(out.logprobs) if want_logprobs else None,
        finish_reason=_finish(out.finish_reason),
    )
    return ChatCompletionResponse(id=meta.request_id, created=meta.created, model=meta.model,
                                  choices=[choice], usage=out.usage(meta.prompt_len))


def completion_response(meta: RequestMeta, out: Collected,
                        want_logprobs: bool) -> CompletionResponse:
    choice = CompletionChoice(
        text=out.text,
        logprobs=completion_logprobs(out.logprobs) if want_logprobs else None,
        finish_reason=_finish(out.finish_reason),
    )
    return CompletionResponse(id=meta.request_id, created=meta.created, model=meta.model,
                              choices=[choice], usage=out.usage(meta.prompt_len))


# ---- streams --------------------------------------------------------------------------------

class ChunkRenderer(Protocol):
    def opening(self) -> BaseModel | None: ...

    def chunk(self, delta: GenerationDelta, text_offset: int) -> BaseModel: ...

    def closing(self, finish_reason: FinishReason) -> BaseModel | None: ...

    def usage(self, usage: Usage) -> BaseModel: ...


@dataclass(frozen=True)
class ChatChunks:
    meta: RequestMeta
    want_logprobs: bool

    def _wrap(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> BaseModel:
        m = self.meta
        return ChatCompletionChunk(id=m.request_id, created=m.created, model=m.model,
                                   choices=choices, usage=usage)

    def opening(self) -> BaseModel | None:
        # OpenAI's first chunk names the speaker; some clients build the message from it.
        return self._wrap([ChatChunkChoice(index=0, delta=ChatDelta(role="assistant", content=""),
                                           logprobs=None, finish_reason=None)])

    def chunk(self, delta: GenerationDelta, text_offset: int) -> BaseModel:
        logprobs = (chat_logprobs(delta.logprobs or ())
                    if self.want_logprobs and delta.logprobs else None)
        return self._wrap([ChatChunkChoice(index=0, delta=ChatDelta(content=delta.text),
                                           logprobs=logprobs, finish_reason=None)])

    def closing(self, finish_reason: FinishReason) -> BaseModel | None:
        return self._wrap([ChatChunkChoice(index=0, delta=ChatDelta(), logprobs=None,
                                           finish_reason=finish_reason)])

    def usage(self, usage: Usage) -> BaseModel:
        return self._wrap([], usage)


@dataclass(frozen=True)
class CompletionChunks:
    meta: RequestMeta
    want_logprobs: bool

    def _wrap(self, choices: list[CompletionChoice], usage: Usage | None = None) -> BaseModel:
        m = self.meta
        return CompletionResponse(id=m.request_id, created=m.created, model=m.model,
                                  choices=choices, usage=usage)

    def opening(self) -> BaseModel | None:
        return None

    def chunk(self, delta: GenerationDelta, text_offset: int) -> BaseModel:
        logprobs = (completion_logprobs(delta.logprobs or (), text_offset)
                    if self.want_logprobs and delta.logprobs else None)
        return self._wrap([CompletionChoice(index=0, text=delta.text, logprobs=logprobs,
                                            finish_reason=None)])

    def closing(self, finish_reason: FinishReason) -> BaseModel | None:
        return self._wrap([CompletionChoice(index=0, text="", logprobs=None,
                                            finish_reason=finish_reason)])

    def usage(self, usage: Usage) -> BaseModel:
        return self._wrap([], usage)


def sse(model: BaseModel) -> str:
    data = model.model_dump(mode="json")
    # Keep chunks shaped like OpenAI's: no "usage" key until the usage chunk, and content
    # deltas without "role": null (some clients take a null role as a new message).
    if data.get("usage") is None:
        data.pop("usage", None)
    for choice in data.get("choices", ()):
        if "delta" in choice:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def stream_events(first: GenerationDelta | None, deltas: AsyncIterator[GenerationDelta],
                        render: ChunkRenderer, prompt_len: int,
                        include_usage: bool) -> AsyncIterator[str]:
    """SSE events for one request; an error after the 200 went out becomes an error event."""
    out = Collected()
    try:
        opening = render.opening()
        if opening is not None:
            yield sse(opening)
        delta = first
        while delta is not None:
            offset = len(out.text)
            out.add(delta)
            if delta.text or delta.logprobs:
                yield sse(render.chunk(delta, offset))
            if delta.finish_reason:
                break
            delta = await anext(deltas, None)
        closing = render.closing(_finish(out.finish_reason))
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
