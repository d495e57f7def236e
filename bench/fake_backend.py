"""A deterministic GenerationBackend for tests: no engines, no Ray, same contract.

The output is a pure function of the prompt tokens, so tests can predict it exactly:
token i is ``(sum(prompt) + i) % 1000`` and its text is `` w<token>``. The fake honours
max_tokens (finish "length"), stop strings (text cut before the stop, finish "stop"), a natural
end after ``natural_length`` tokens unless ignore_eos (finish "stop", like EOS), logprobs with
top-k alternatives, and reports a prefix-cache hit count like an engine with ``block_size``
blocks would. It records every request and whether each stream was closed before its end,
which is how tests check that the API aborts work when a client goes away.

``reply`` scripts the output instead (a tool call, a JSON answer): a function of the request
that returns the text, streamed a few characters per delta and ended with "stop". n > 1 goes
through the ingress's own fan-out (router_service/choices.py), one fake sequence per choice.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from contract.wire import GenerationDelta, ServingError, TokenLogprob
from router_service.backend import GenerationRequest
from router_service.choices import fan_out


@dataclass(frozen=True)
class FakeToken:
    token_id: int
    text: str
    logprob: float


def fake_tokens(prompt_token_ids: tuple[int, ...], count: int) -> list[FakeToken]:
    """The tokens the fake generates for a prompt, for tests to compare against."""
    base = sum(prompt_token_ids)
    out = []
    for i in range(count):
        token_id = (base + i) % 1000
        out.append(FakeToken(token_id, f" w{token_id}", -0.25 * (i % 4 + 1)))
    return out


class FakeBackend:
    def __init__(self, natural_length: int = 8, tokens_per_delta: int = 1,
                 delay_s: float = 0.0, block_size: int = 16,
                 reply: Callable[[GenerationRequest], str] | None = None) -> None:
        self.reply = reply
        self.natural_length = natural_length
        self.tokens_per_delta = tokens_per_delta
        self.delay_s = delay_s
        self.block_size = block_size
        self.requests: list[GenerationRequest] = []
        self.completed: set[str] = set()
        self.closed_early: set[str] = set()
        self.closed = asyncio.Event()  # set whenever any stream is closed before its end
        # Set these to make the next requests fail: before the first delta, or after N deltas.
        self.fail_with: BaseException | None = None
        self.fail_after_deltas: int | None = None
        self._seen_prompts: list[tuple[int, ...]] = []

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        self.requests.append(request)
        if request.n == 1:
            return self._run(request)

        def one(index: int, prefilled: asyncio.Event) -> AsyncIterator[GenerationDelta]:
            prefilled.set()
            seed = request.sampling.seed
            sampling = dataclasses.replace(request.sampling,
                                           seed=None if seed is None else seed + index)
            choice = dataclasses.replace(request, request_id=f"{request.request_id}-{index}",
                                         sampling=sampling, n=1)
            self.requests.append(choice)  # after the request itself: one per choice
            return self._run(choice, shift=index)

        return fan_out(one, request.n)

    async def _run(self, request: GenerationRequest,
                   shift: int = 0) -> AsyncIterator[GenerationDelta]:
        """``shift``: choice i of n>1 generates the sequence of a prompt i larger, so the
        choices differ as sampled choices would."""
        finished = False
        try:
            if self.fail_with is not None and self.fail_after_deltas is None:
                raise self.fail_with
            cached = self._cached_tokens(request.prompt_token_ids)
            self._seen_prompts.append(request.prompt_token_ids)
            deltas = (self._scripted(request, cached) if self.reply is not None
                      else self._deltas(request, cached, shift))
            async for delta in deltas:
                if delta.finish_reason:
                    # Done from the engine's point of view: closing the stream after this
                    # final delta is normal, not an abort.
                    finished = True
                    self.completed.add(request.request_id)
                yield delta
        finally:
            if not finished:
                self.closed_early.add(request.request_id)
                self.closed.set()

    async def _scripted(self, request: GenerationRequest,
                        cached: int) -> AsyncIterator[GenerationDelta]:
        assert self.reply is not None
        text = self.reply(request)
        pieces = [text[i:i + 4] for i in range(0, len(text), 4)] or [""]
        for i, piece in enumerate(pieces):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            last = i == len(pieces) - 1
            yield GenerationDelta(text=piece, token_ids=(i,), finish_reason="stop" if last else None,
                                  num_cached_prompt_tokens=cached if last else None)

    async def _deltas(self, request: GenerationRequest, cached: int,
                      shift: int = 0) -> AsyncIterator[GenerationDelta]:
        sampling = request.sampling
        length = sampling.max_tokens
        if not sampling.ignore_eos:
            length = min(length, self.natural_length)
        tokens = fake_tokens(request.prompt_token_ids + (shift,) * bool(shift), length)
        text, emitted, sent = "", 0, 0
        for start in range(0, len(tokens), self.tokens_per_delta):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.fail_after_deltas is not None and sent >= self.fail_after_deltas:
                raise self.fail_with or ServingError("fake failure mid-stream", 503)
            chunk = tokens[start:start + self.tokens_per_delta]
            text += "".join(t.text for t in chunk)
            stop_at = _first_stop(text, sampling.stop)
            last = start + len(chunk) >= len(tokens)
            finish = None
            if stop_at is not None:
                new_text, finish = text[emitted:stop_at], "stop"
            else:
                new_text = text[emitted:]
                if last:
                    finish = "length" if length == sampling.max_tokens else "stop"
            emitted += len(new_text)
            yield GenerationDelta(
                text=new_text,
                token_ids=tuple(t.token_id for t in chunk),
                logprobs=(None if sampling.logprobs is None
                          else tuple(_logprob(t, sampling.logprobs) for t in chunk)),
                finish_reason=finish,
                num_cached_prompt_tokens=cached if finish else None,
            )
            sent += 1
            if finish:
                return

    def _cached_tokens(self, prompt: tuple[int, ...]) -> int:
        best = 0
        for seen in self._seen_prompts:
            n = 0
            for a, b in zip(seen, prompt):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        # Like vLLM: only whole blocks are reused, and never the last prompt token.
        return min(best, len(prompt) - 1) // self.block_size * self.block_size


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _logprob(token: FakeToken, k: int) -> TokenLogprob:
    # The sampled token first, then made-up alternatives, each less likely.
    alternatives = [(f" alt{j}", token.logprob - j) for j in range(1, k)]
    top = ([(token.text, token.logprob)] + alternatives)[:k]
    return TokenLogprob(token_id=token.token_id, token=token.text, logprob=token.logprob,
                        top=tuple(top))
