"""A client that goes away must abort the backend request (its iterator gets closed).

httpx's ASGITransport buffers whole responses, so these tests drive the ASGI app directly
and play the server's part: deliver the request, read some chunks, then disconnect.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bench.fake_backend import FakeBackend
from tests.api_fixtures import chat_body, make_app


def _scope(path: str, spec_version: str) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
        "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 1234), "server": ("test", 80),
    }


def _slow_backend() -> FakeBackend:
    # Effectively endless unless closed: 400 tokens at 5 ms each.
    return FakeBackend(delay_s=0.005)


def _long_body(**extra: Any) -> bytes:
    return json.dumps(chat_body(model="planner", max_tokens=400, ignore_eos=True,
                                **extra)).encode()


# ASGI < 2.4: Starlette listens for http.disconnect and cancels the stream.
# ASGI >= 2.4: the server reports a gone client by raising OSError from send().
@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/roles/coder/v1/completions"])
async def test_disconnect_mid_stream_closes_backend_iterator(spec_version: str,
                                                             path: str) -> None:
    backend = _slow_backend()
    app, _ = make_app(backend)
    if "completions" in path and "chat" not in path:
        body = json.dumps({"prompt": "x", "max_tokens": 400, "ignore_eos": True,
                           "stream": True}).encode()
    else:
        body = _long_body(stream=True)
    gone = asyncio.Event()
    request_sent = False
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            if gone.is_set():
                raise OSError("client went away")
            chunks.append(message["body"])
            if len(chunks) == 3:
                gone.set()
                if spec_version == "2.4":
                    raise OSError("client went away")

    await app(_scope(path, spec_version), receive, send)
    # Closed by the time the app returns, not later by the garbage collector's finalizer.
    (request,) = backend.requests
    assert backend.closed_early == {request.request_id}
    assert request.request_id not in backend.completed
    assert len(chunks) < 20


async def test_cancelled_non_streaming_request_closes_backend_iterator() -> None:
    # What Serve and uvicorn do to a handler whose client disconnected: cancel its task.
    backend = _slow_backend()
    app, _ = make_app(backend)
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": _long_body(), "more_body": False}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("no response is expected from a cancelled request")

    task = asyncio.create_task(app(_scope("/v1/chat/completions", "2.3"), receive, send))
    while not backend.requests:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(backend.closed.wait(), timeout=2)
    assert backend.closed_early == {backend.requests[0].request_id}


async def test_finished_stream_is_not_counted_as_aborted() -> None:
    backend = FakeBackend()
    app, _ = make_app(backend)
    done: list[bool] = []

    async def receive() -> dict[str, Any]:
        if not done:
            done.append(True)
            body = json.dumps(chat_body(model="planner", max_tokens=3, stream=True)).encode()
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    await asyncio.wait_for(app(_scope("/v1/chat/completions", "2.4"), receive, send), timeout=5)
    assert backend.closed_early == set()
    assert backend.completed == {backend.requests[0].request_id}
