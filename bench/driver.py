"""Replays a multi-agent Workload against a running OpenAI-compatible PrefillShare URL.

Runs in the benchmark's own process: pure asyncio + httpx, no Ray, so it measures the
serving stack from the outside exactly as an agent framework would see it. Every call is a
STREAMING chat completion (TTFT is the time to the first content chunk) with ``ignore_eos``
so output lengths are fixed, and ``x-session-id`` set so the ingress can route by session.

Sessions arrive on the workload's Poisson schedule and run when fewer than
``max_concurrent_sessions`` are running (closed loop); an arrived session waits for a slot and
the wait is recorded. A failed call ends its session (the next agent would have nothing to
read). The run ends when every session is done, and never later than ``max_run_s``: whatever
is still in flight then is cancelled and recorded as failed, so calls sent always equals
calls completed plus calls failed.

If ``stats_url`` is given (the ingress's GET /stats), engine counters are read before and
after the run and sampled while it runs; a URL that does not answer with counters (404 on a
plain API) just leaves them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
import sys
import time
from typing import Any, TextIO

import httpx

from bench.records import CallRecord, RunResult, SessionRecord, StatsSample
from bench.workload import (
    Step,
    Workload,
    arrival_times,
    initial_messages,
    observation_message,
    session_id,
    session_steps,
)

SESSION_HEADER = "x-session-id"


def check_loopback(url: str, allow_remote: bool = False) -> None:
    """A load generator pointed at the wrong host is a denial-of-service tool: only loopback
    targets unless the caller says otherwise."""
    if allow_remote:
        return
    host = httpx.URL(url).host
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{url} is not a loopback address; pass allow_remote=True "
                         "(--allow-remote) to benchmark a remote server")


async def drive(url: str, workload: Workload, *, stats_url: str | None = None,
                allow_remote: bool = False, progress: TextIO | None = sys.stderr,
                progress_s: float = 5.0, stats_interval_s: float = 1.0,
                run_tag: str | None = None, api_key: str | None = None) -> RunResult:
    """Run ``workload`` against ``url`` (e.g. http://127.0.0.1:8000) and return every call.
    ``run_tag`` goes into every session id and context (default: random, so that a rerun
    finds nothing of this run in the prefix caches). ``api_key`` is sent as a bearer token
    on every request (an app with ``auth.enabled``)."""
    check_loopback(url, allow_remote)
    if stats_url is not None:
        check_loopback(stats_url, allow_remote)
    # Each session has at most one call in flight; two more for /v1/models and /stats.
    limits = httpx.Limits(max_connections=workload.max_concurrent_sessions + 2,
                          max_keepalive_connections=workload.max_concurrent_sessions + 2)
    timeout = httpx.Timeout(workload.request_timeout_s, connect=10.0)
    # trust_env=False: an HTTP(S)_PROXY in the environment must not reroute loopback traffic.
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits,
                                 headers=headers, trust_env=False) as client:
        workload = workload.with_roles(await served_roles(client))
        run = _Run(client, workload, url, stats_url, progress, progress_s, stats_interval_s,
                   run_tag or secrets.token_hex(3))
        return await run.execute()


async def served_roles(client: httpx.AsyncClient) -> list[str]:
    r = await client.get("/v1/models")
    r.raise_for_status()
    return [m["id"] for m in r.json()["data"]]


async def fetch_stats(client: httpx.AsyncClient, stats_url: str | None) -> dict[str, Any] | None:
    if stats_url is None:
        return None
    try:
        r = await client.get(stats_url, timeout=30.0)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    with contextlib.suppress(ValueError):
        data = r.json()
        if isinstance(data, dict) and isinstance(data.get("prefill"), dict):
            return data
    return None


class _Run:
    def __init__(self, client: httpx.AsyncClient, workload: Workload, url: str,
                 stats_url: str | None, progress: TextIO | None, progress_s: float,
                 stats_interval_s: float, run_tag: str) -> None:
        self.client = client
        self.run_tag = run_tag
        self.workload = workload
        self.stats_url = stats_url
        self.progress = progress
        self.progress_s = progress_s
        self.stats_interval_s = stats_interval_s
        self.t0 = time.perf_counter()
        self.result = RunResult(url=url, workload=workload.model_dump(mode="json"),
                                started_at=time.time(), run_tag=run_tag)
        self.slots = asyncio.Semaphore(workload.max_concurrent_sessions)
        self.tasks: list[asyncio.Task[None]] = []
        self.active = 0
        self.calls_sent = 0
        self.calls_failed = 0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def execute(self) -> RunResult:
        before = await fetch_stats(self.client, self.stats_url)
        self.t0 = time.perf_counter()  # t = 0 is the first arrival, after the stats read
        self.result.started_at = time.time()
        helpers = [asyncio.create_task(self._report_progress())]
        if before is not None:
            self.result.stats_before = StatsSample(0.0, before)
            helpers.append(asyncio.create_task(self._sample_stats()))
        try:
            async with asyncio.timeout(self.workload.max_run_s):
                await self._arrive()
                await asyncio.gather(*self.tasks)
        except TimeoutError:
            self.result.stopped_by = "max_run_s"
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        if before is not None:
            after = await fetch_stats(self.client, self.stats_url)
            if after is not None:
                self.result.stats_after = StatsSample(self.now(), after)
        self._print_progress(final=True)
        self.result.sessions.sort(key=lambda s: s.index)
        self.result.calls.sort(key=lambda c: c.start_s)
        return self.result

    async def _arrive(self) -> None:
        for index, at in enumerate(arrival_times(self.workload)):
            delay = at - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            self.tasks.append(asyncio.create_task(self._session(index, at)))

    async def _session(self, index: int, arrival_s: float) -> None:
        sid = session_id(self.workload, index, self.run_tag)
        steps = session_steps(self.workload, index)
        start: float | None = None
        sent = 0
        error: str | None = None
        try:
            async with self.slots:
                duration = self.workload.duration_s
                if duration is not None and self.now() > duration:
                    error = "not started: the start window (duration_s) closed while queued"
                    return
                start = self.now()
                self.active += 1
                try:
                    messages = initial_messages(self.workload, index, self.run_tag)
                    for step in steps:
                        sent += 1
                        if step.before is not None:
                            messages.append({"role": "user", "content": step.before})
                        text = await self._call(sid, step, messages)
                        if text is None:
                            error = f"call {step.index} ({step.role}) failed"
                            return
                        messages.append({"role": "assistant", "content": text})
                        if step.observation_tokens is not None:
                            messages.append(observation_message(self.workload, index, step))
                finally:
                    self.active -= 1
        except asyncio.CancelledError:
            error = error or "cancelled at max_run_s"
            raise
        finally:
            self.result.sessions.append(SessionRecord(
                session=sid, index=index, arrival_s=arrival_s, start_s=start,
                end_s=None if start is None else self.now(), calls_planned=len(steps),
                calls_sent=sent, error=error))

    async def _call(self, sid: str, step: Step, messages: list[dict[str, str]]) -> str | None:
        """One streaming chat completion; records it and returns its text (None: failed)."""
        body = {"model": step.role, "messages": messages,
                "max_tokens": self.workload.output_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        if self.workload.count_streamed_tokens:
            body["logprobs"] = True  # one logprobs entry per token: the tokens can be counted
        self.calls_sent += 1
        start = self.now()
        out = _StreamOutcome()
        try:
            async with asyncio.timeout(self.workload.request_timeout_s):
                await self._stream(sid, body, start, out)
        except TimeoutError:
            out.error = f"timeout after {self.workload.request_timeout_s:g}s"
        except asyncio.CancelledError:
            out.error = "cancelled at max_run_s"
            self._record(sid, step, start, out)
            raise
        except Exception as exc:  # any transport or protocol failure is a failed call
            out.error = f"{type(exc).__name__}: {exc}"
        if out.error is None and out.usage is None:
            out.error = "stream ended without a usage chunk"
        self._record(sid, step, start, out)
        return None if out.error is not None else "".join(out.text)

    async def _stream(self, sid: str, body: dict[str, Any], start: float,
                      out: _StreamOutcome) -> None:
        async with self.client.stream("POST", "/v1/chat/completions", json=body,
                                      headers={SESSION_HEADER: sid}) as r:
            out.status = r.status_code
            if r.status_code != 200:
                raw = (await r.aread()).decode(errors="replace")
                out.error = f"HTTP {r.status_code} [{openai_error_code(raw)}]: {raw[:300]}"
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:  # the API reports failures after the 200 in the stream
                    out.error = f"stream error: {chunk['error'].get('message', chunk['error'])}"
                    return
                for choice in chunk.get("choices") or ():
                    counted = (choice.get("logprobs") or {}).get("content")
                    if counted:
                        out.streamed_tokens += len(counted)
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        if out.ttft_s is None:
                            out.ttft_s = self.now() - start
                        out.text.append(piece)
                if chunk.get("usage"):
                    out.usage = chunk["usage"]

    def _record(self, sid: str, step: Step, start: float, out: _StreamOutcome) -> None:
        usage = out.usage or {}
        details = usage.get("prompt_tokens_details") or {}
        if out.error is not None:
            self.calls_failed += 1
        self.result.calls.append(CallRecord(
            session=sid, turn=step.turn, step=step.index, role=step.role, kind=step.kind,
            start_s=start, end_s=self.now(), ttft_s=out.ttft_s,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cached_tokens=details.get("cached_tokens"), status=out.status, error=out.error,
            streamed_tokens=out.streamed_tokens if self.workload.count_streamed_tokens else None))

    async def _sample_stats(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval_s)
            stats = await fetch_stats(self.client, self.stats_url)
            if stats is not None:
                self.result.stats_samples.append(StatsSample(self.now(), stats))

    async def _report_progress(self) -> None:
        while True:
            await asyncio.sleep(self.progress_s)
            self._print_progress()

    def _print_progress(self, final: bool = False) -> None:
        if self.progress is None:
            return
        ended = len(self.result.sessions)
        queued = len(self.tasks) - ended - self.active
        tag = "done" if final else "running"
        print(f"[bench {tag} {self.now():7.1f}s] sessions: {ended} ended, {self.active} active, "
              f"{queued} queued | calls: {self.calls_sent} sent, "
              f"{self.calls_sent - self.calls_failed - self._in_flight()} ok, "
              f"{self.calls_failed} failed", file=self.progress, flush=True)

    def _in_flight(self) -> int:
        return self.calls_sent - len(self.result.calls)


def openai_error_code(body: str) -> str:
    """``error.code`` of an OpenAI error body ("-" if none): kept whole in the record, where
    the body itself is cut short."""
    try:
        code = json.loads(body)["error"].get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        return "-"
    return str(code) if code else "-"


class _StreamOutcome:
    """What one streamed call produced so far (filled in while the stream is read)."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.ttft_s: float | None = None
        self.text: list[str] = []
        self.streamed_tokens = 0
        self.usage: dict[str, Any] | None = None
        self.error: str | None = None
