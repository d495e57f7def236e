"""The front door on the real stack: API keys, role restriction, body limit and rate limit
through Ray Serve's HTTP proxy to real engines (tiny models), and no key or prompt in any log
the cluster wrote. The same checks run fast against the ASGI app in tests/test_api_security.py;
this one proves the Serve proxy passes the Authorization header through, answers with the
middleware's status codes and headers, and that Serve's access logs stay clean."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.running_app import running_app, tiny_engine, tiny_models

pytestmark = pytest.mark.slow

ADMIN = "sk-e2e-admin-5f0c2a9d4b7e1"
PLANNER_ONLY = "sk-e2e-planner-8d3b6e2f90a4"
LIMITED = "sk-e2e-limited-1a7c4e9b3d52"
PROMPT_MARKER = "zebra-quartz-7781 secret plan"
MAX_BODY = 4096


@pytest.fixture(scope="module")
def app():
    base, decoder = tiny_models()
    engine = tiny_engine()
    args = {
        "base_model": base,
        "prefill_pools": {"shared": {"engine": engine}},
        "roles": [{"name": r, "decoder": decoder, "decode_pool": {"engine": engine}}
                  for r in ("planner", "critic")],
        "auth": {"enabled": True, "keys_env": None, "api_keys": [
            {"name": "admin", "key": ADMIN},
            {"name": "planner-bot", "key": PLANNER_ONLY, "roles": ["planner"]},
            {"name": "limited", "key": LIMITED,
             "rate_limit": {"requests_per_s": 0.001, "burst": 1}},
        ]},
        "limits": {"max_body_bytes": MAX_BODY},
    }
    with running_app(args) as running:
        yield running


def _chat(model: str, content: str = PROMPT_MARKER, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}],
            "max_tokens": 4, "temperature": 0, **extra}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code and err["message"], err
    return err


def test_keys_decide_who_gets_in(app):
    c = app.client
    assert c.get("/health").status_code == 200  # probes carry no key
    _error(c.post("/v1/chat/completions", json=_chat("planner")), 401, "missing_api_key")
    _error(c.post("/v1/chat/completions", json=_chat("planner"),
                  headers=_bearer("sk-e2e-wrong-000000000000")), 401, "invalid_api_key")
    _error(c.get("/v1/models"), 401, "missing_api_key")

    ok = c.post("/v1/chat/completions", json=_chat("planner"), headers=_bearer(PLANNER_ONLY))
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["completion_tokens"] == 4
    err = _error(c.post("/v1/chat/completions", json=_chat("critic"),
                        headers=_bearer(PLANNER_ONLY)), 403, "model_not_allowed")
    assert PLANNER_ONLY not in err["message"]

    # Streaming through the proxy with the admin key: real SSE from the engines.
    with c.stream("POST", "/v1/chat/completions", json=_chat("critic", stream=True),
                  headers=_bearer(ADMIN)) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) >= 3


def test_body_limit_and_rate_limit(app):
    c = app.client
    big = _chat("planner", content="x " * MAX_BODY)
    _error(c.post("/v1/chat/completions", json=big, headers=_bearer(ADMIN)), 413,
           "request_too_large")

    first = c.post("/v1/chat/completions", json=_chat("planner"), headers=_bearer(LIMITED))
    assert first.status_code == 200, first.text
    second = c.post("/v1/chat/completions", json=_chat("planner"), headers=_bearer(LIMITED))
    _error(second, 429, "rate_limit_exceeded")
    assert int(second.headers["retry-after"]) >= 1
    # Another key has its own bucket.
    assert c.post("/v1/chat/completions", json=_chat("planner"),
                  headers=_bearer(ADMIN)).status_code == 200


def test_no_key_or_prompt_in_the_cluster_logs(app):
    import ray

    # After the two tests above: every Ray and Serve log of this cluster (proxy access logs,
    # replica logs, engine output captured by Ray).
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert any("serve" in p.parts for p in files)
    for path in files:
        text = path.read_bytes().decode("utf-8", "replace")
        for secret in (ADMIN, PLANNER_ONLY, LIMITED, PROMPT_MARKER):
            assert secret not in text, f"{secret!r} in {path}"
