"""Faults on real engines (tiny models, Ray Serve, NIXL), run under the engine lock.

- Stage timeouts and disconnects on one prefill and one decode engine: a KV pull that cannot
  finish (a pull armed to fail, whose NIXL handshake takes 5 s) against kv_pull_s = 2 s gives
  a 504 ``kv_pull_timeout``; a client that leaves before the first token aborts it; either
  way neither engine keeps a KV block.
The fault run under load is tests/e2e/test_fault_run_e2e.py (its own app and Ray).
"""

from __future__ import annotations

import httpx
import pytest

from bench.running_app import running_app, tiny_engine, tiny_models, wait_for

pytestmark = pytest.mark.slow

KV_PULL_S = 2.0  # below NIXL's 5 s handshake timeout, so an armed pull outlasts it


@pytest.fixture(scope="module")
def app():
    base, decoder = tiny_models()
    engine = tiny_engine(kv_cache_space_gib=0.25)
    args = {
        "base_model": base,
        "prefill_pools": {"shared": {"engine": engine}},
        "roles": [{"name": "planner", "decoder": decoder, "decode_pool": {"engine": engine}}],
        "timeouts": {"prefill_s": 60, "kv_pull_s": KV_PULL_S, "first_token_s": 60,
                     "request_s": 120},
    }
    with running_app(args, fault_injection=True) as running:
        yield running


def _arm_kv_pull_failure(app) -> None:
    app.handle("decode-planner").fail_next_kv_pulls.remote(1).result(timeout_s=30)


def _assert_both_engines_free(app) -> None:
    for name in ("decode-planner", "prefill-shared"):
        assert wait_for(lambda: app.handle(name).all_blocks_free.remote().result(),
                        timeout_s=60), f"{name} still holds KV blocks"


def _body(**extra) -> dict:
    return {"model": "planner", "prompt": "tell me a story " * 40, "max_tokens": 8, **extra}


def test_kv_pull_timeout_is_a_504_naming_the_stage_and_frees_both_engines(app):
    for stream in (False, True):
        _arm_kv_pull_failure(app)
        r = app.client.post("/v1/completions", json=_body(stream=stream))
        assert r.status_code == 504, r.text
        err = r.json()["error"]
        assert err["code"] == "kv_pull_timeout" and err["type"] == "timeout"
        assert err["message"].startswith(f"KV pull timed out after {KV_PULL_S:g}s")
    _assert_both_engines_free(app)
    # A healthy pull ends well within kv_pull_s and the request completes.
    r = app.client.post("/v1/completions", json=_body())
    assert r.status_code == 200, r.text


def test_client_leaving_before_the_first_token_frees_both_engines(app):
    before = app.handle("decode-planner").stats.remote().result()["requests_aborted"]
    _arm_kv_pull_failure(app)  # keeps the request in its KV pull for seconds
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{app.url}/v1/completions", json=_body(stream=True), timeout=1.0)
    assert wait_for(lambda: app.handle("decode-planner").stats.remote().result()[
        "requests_aborted"] > before, timeout_s=60)
    _assert_both_engines_free(app)

