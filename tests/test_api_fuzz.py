"""Schemathesis against the API's own OpenAPI spec, over a real socket (uvicorn, fake backend).

Every operation in the spec gets generated requests, valid (positive) and invalid (negative);
none may answer 5xx or take longer than REQUEST_TIMEOUT_S, and every error must have the
OpenAI body. The fast run is bounded and derandomized so CI is stable; the slow-marked run
tries many more examples (FUZZ_EXAMPLES, default 300 per operation and mode).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bench.fake_backend import FakeBackend
from router_service.auth import KeySources, make_key
from router_service.guard import RequestGuard
from tests.api_fixtures import make_app, served_on_loopback

KEY = "sk-fuzz-0123456789abcdef"
REQUEST_TIMEOUT_S = 10.0
MAX_BODY_BYTES = 64 * 1024
FAST_EXAMPLES = 8


@pytest.fixture(scope="module")
def live_api() -> Iterator[tuple[str, dict[str, Any]]]:
    """The app with auth and a body limit on, served by uvicorn on 127.0.0.1; and its spec."""
    guard = RequestGuard(KeySources((make_key("fuzz", KEY),)), max_body_bytes=MAX_BODY_BYTES)
    app, _ = make_app(FakeBackend(), guard=guard)
    spec = app.openapi()
    with served_on_loopback(app) as url:
        yield url, spec


# The response must match the spec: status code, media type and body schema, 5xx never.
SPEC_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
               response_schema_conformance]


def check_response(resp: httpx.Response, what: str) -> None:
    assert resp.status_code < 500, f"{what}: {resp.status_code} {resp.text[:500]}"
    if resp.status_code >= 400:
        body = resp.json()
        assert set(body) == {"error"}, f"{what}: {body}"
        assert set(body["error"]) == {"message", "type", "param", "code"}, f"{what}: {body}"
    elif resp.headers["content-type"].startswith("text/event-stream"):
        events = [e for e in resp.text.split("\n\n") if e.strip()]
        assert events and events[-1] == "data: [DONE]", f"{what}: {resp.text[-300:]}"
        for event in events[:-1]:
            json.loads(event.removeprefix("data: "))
    else:
        resp.json()


def fuzz(base_url: str, spec: dict[str, Any], mode: GenerationMode, examples: int,
         derandomize: bool) -> int:
    schema = schemathesis.openapi.from_dict(spec)
    client = httpx.Client(timeout=REQUEST_TIMEOUT_S)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    sent = 0
    for op in operations:
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, derandomize=derandomize, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate], print_blob=True,
                  suppress_health_check=list(HealthCheck))
        def one(case: Any) -> None:
            nonlocal sent
            # (schemathesis' own case.call goes through `requests`, which the urllib3-future
            # in this environment breaks; httpx sends the same request.)
            kwargs = case.as_transport_kwargs(base_url=base_url,
                                              headers={"authorization": f"Bearer {KEY}"})
            kwargs.pop("cookies", None)
            if "data" in kwargs:
                kwargs["content"] = kwargs.pop("data")
            # The client's timeout bounds every read: a hung request fails the test.
            resp = client.request(**kwargs)
            sent += 1
            what = (f"{case.method} {case.formatted_path} {mode.value} "
                    f"body={str(case.body)[:300]!r}")
            check_response(resp, what)
            case.validate_response(resp, checks=SPEC_CHECKS)

        try:
            one()
        except Unsatisfiable:
            # Nothing to make invalid: no parameters, no body (GET /v1/models, /health).
            assert mode == GenerationMode.NEGATIVE and not op.path_parameters and not op.body
    return sent


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_get_no_5xx_and_no_hang(live_api: tuple[str, dict[str, Any]],
                                                mode: GenerationMode) -> None:
    url, spec = live_api
    assert fuzz(url, spec, mode, FAST_EXAMPLES, derandomize=True) > 0


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_long_run(live_api: tuple[str, dict[str, Any]],
                                  mode: GenerationMode) -> None:
    url, spec = live_api
    examples = int(os.environ.get("FUZZ_EXAMPLES", "300"))
    assert fuzz(url, spec, mode, examples, derandomize=False) > 0


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversized_body_gets_413_over_a_real_socket(live_api: tuple[str, dict[str, Any]],
                                                       chunked: bool) -> None:
    """uvicorn, not the test transport: the client reads the 413 even though the server
    answers before taking the rest of a 2 MB body."""
    url, _ = live_api
    body = (b'{"model": "planner", "messages": [{"role": "user", "content": "'
            + b"x" * 2_000_000 + b'"}]}')
    content: Any = body
    if chunked:
        content = (body[i:i + 65536] for i in range(0, len(body), 65536))
    resp = httpx.post(f"{url}/v1/chat/completions", content=content, timeout=REQUEST_TIMEOUT_S,
                      headers={"authorization": f"Bearer {KEY}",
                               "content-type": "application/json"})
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["code"] == "request_too_large"
