"""Shared pieces for the router_service API tests (imported by tests/test_api_*.py).

Kept out of conftest.py so that these names cannot collide with other test suites' fixtures.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from bench.fake_backend import FakeBackend
from contract.roles import ServedRole
from router_service.api import build_api

MAX_MODEL_LEN = 512
API_ROLES = [
    ServedRole("planner", "You are the planner. Break the task into steps."),
    ServedRole("coder", "You are the coder. Write the code."),
    ServedRole("critic", None),
]


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer() -> Any:
    """The base tokenizer, loaded once per test session (the model weights are never loaded).

    PreTrainedTokenizerFast is the class AutoTokenizer resolves to for this folder; naming it
    directly skips AutoTokenizer's import of torch, several seconds on a loaded 2-core box.
    """
    from transformers import PreTrainedTokenizerFast

    from vllm_runtime.model_assets import smollm2_folder

    return PreTrainedTokenizerFast.from_pretrained(smollm2_folder())


def make_app(backend: FakeBackend | None = None, **kwargs: Any) -> tuple[FastAPI, FakeBackend]:
    backend = backend or FakeBackend()
    kwargs.setdefault("max_model_len", MAX_MODEL_LEN)
    app = build_api(backend, kwargs.pop("roles", API_ROLES), smollm2_tokenizer(), **kwargs)
    return app, backend


def http_client(app: FastAPI) -> httpx.AsyncClient:
    # raise_app_exceptions=False: a 500 must come back as a response, as it would over a socket.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def sse_payloads(body: str) -> list[Any]:
    """The JSON payloads of an SSE body, with "[DONE]" kept as the string."""
    out: list[Any] = []
    for event in body.split("\n\n"):
        if not event.strip():
            continue
        assert event.startswith("data: "), event
        data = event[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None,
                        param: str | None = None, error_type: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    if error_type is not None:
        assert err["type"] == error_type, err
    return err


@pytest.fixture
def api_backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def api_client(api_backend: FakeBackend) -> Any:
    app, _ = make_app(api_backend)
    async with http_client(app) as client:
        yield client


def chat_body(content: str = "Say hello.", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **extra}


@contextlib.contextmanager
def served_on_loopback(app: FastAPI) -> Iterator[str]:
    """Serve `app` with a real uvicorn on 127.0.0.1 (a free port) in a thread; yields its URL.
    For tests that need real sockets (streaming clients, fuzzers, body limits)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
