"""The ingress's front door over HTTP (fake backend): API keys (401/403), rate limits (429),
body size (413), what needs no key, and that keys and prompts never reach the logs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.fake_backend import FakeBackend
from contract.config import AppConfig
from contract.wire import ServingError
from router_service.auth import KeyConfigError, KeySources, make_key
from router_service.guard import RequestGuard, guard_from_config
from router_service.rate_limit import RateLimiter
from tests.api_fixtures import assert_openai_error, chat_body, http_client, make_app

ADMIN = "sk-admin-0123456789abcdef"
PLANNER_ONLY = "sk-plan-0123456789abcdef"
ROLES = ("planner", "coder", "critic")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def keyed_guard(**kwargs: Any) -> RequestGuard:
    sources = KeySources((make_key("admin", ADMIN), make_key("planner-bot", PLANNER_ONLY,
                                                             ["planner"])))
    return RequestGuard(sources, known_roles=ROLES, **kwargs)


async def client_for(guard: RequestGuard | None, backend: FakeBackend | None = None,
                     ) -> AsyncIterator[httpx.AsyncClient]:
    app, _ = make_app(backend, guard=guard)
    async with http_client(app) as client:
        yield client


@pytest.fixture
async def keyed() -> AsyncIterator[httpx.AsyncClient]:
    async for c in client_for(keyed_guard()):
        yield c


async def test_missing_and_wrong_keys_are_401_with_openai_bodies(keyed: httpx.AsyncClient) -> None:
    body = chat_body(model="planner")
    for headers, code in (({}, "missing_api_key"), (bearer("sk-wrong-0123456789abcdef"),
                                                     "invalid_api_key"),
                          ({"authorization": f"Basic {ADMIN}"}, "missing_api_key"),
                          ({"authorization": "Bearer "}, "missing_api_key")):
        resp = await keyed.post("/v1/chat/completions", json=body, headers=headers)
        err = assert_openai_error(resp, 401, code=code, error_type="invalid_request_error")
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert ADMIN not in err["message"]
    # Every path but /health needs a key: unknown ones too, so nothing can be probed.
    for path in ("/v1/models", "/v1/models/planner", "/roles/planner/v1/models", "/openapi.json",
                 "/no/such/path"):
        assert_openai_error(await keyed.get(path), 401)


async def test_a_valid_key_is_served(keyed: httpx.AsyncClient) -> None:
    for key in (ADMIN, PLANNER_ONLY):
        resp = await keyed.post("/v1/chat/completions", json=chat_body(model="planner"),
                                headers=bearer(key))
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"]


async def test_a_role_restricted_key_gets_403_elsewhere(keyed: httpx.AsyncClient) -> None:
    h = bearer(PLANNER_ONLY)
    for path, body in (("/v1/chat/completions", chat_body(model="coder")),
                       ("/v1/completions", {"model": "coder", "prompt": "x"}),
                       ("/roles/coder/v1/chat/completions", chat_body()),
                       ("/roles/coder/v1/completions", {"prompt": "x"})):
        err = assert_openai_error(await keyed.post(path, json=body, headers=h), 403,
                                  code="model_not_allowed", param="model")
        assert "planner-bot" in err["message"] and PLANNER_ONLY not in err["message"]
    assert_openai_error(await keyed.get("/v1/models/coder", headers=h), 403)
    # An unknown role is a 404 that lists only the roles this key may use.
    err = assert_openai_error(await keyed.post("/v1/chat/completions", headers=h,
                                               json=chat_body(model="nobody")), 404)
    assert "planner" in err["message"] and "coder" not in err["message"]


async def test_models_list_shows_the_roles_a_key_may_use(keyed: httpx.AsyncClient) -> None:
    ids = lambda r: [m["id"] for m in r.json()["data"]]  # noqa: E731
    assert ids(await keyed.get("/v1/models", headers=bearer(PLANNER_ONLY))) == ["planner"]
    assert sorted(ids(await keyed.get("/v1/models", headers=bearer(ADMIN)))) == sorted(ROLES)


async def test_health_needs_no_key(keyed: httpx.AsyncClient) -> None:
    resp = await keyed.get("/health")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}


async def test_auth_is_off_by_default() -> None:
    cfg = AppConfig.model_validate({"roles": [{"name": "planner"}]})
    assert not cfg.auth.enabled and cfg.limits.rate_limit is None
    async for client in client_for(guard_from_config(cfg.auth, cfg.limits, ["planner"])):
        resp = await client.post("/v1/chat/completions", json=chat_body(model="planner"))
        assert resp.status_code == 200, resp.text


async def test_rate_limit_is_429_with_retry_after_per_key() -> None:
    clock = Clock()
    guard = keyed_guard(limiter=RateLimiter(rate_per_s=0.5, burst=2), clock=clock)
    async for client in client_for(guard):
        async def ask(key: str) -> httpx.Response:
            return await client.post("/v1/chat/completions", json=chat_body(model="planner"),
                                     headers=bearer(key))

        assert [(await ask(ADMIN)).status_code for _ in range(2)] == [200, 200]
        resp = await ask(ADMIN)
        err = assert_openai_error(resp, 429, code="rate_limit_exceeded")
        assert resp.headers["retry-after"] == "2"  # one token every 2 s
        assert "admin" in err["message"]
        # The other key's bucket is untouched; health is never limited.
        assert (await ask(PLANNER_ONLY)).status_code == 200
        assert (await client.get("/health")).status_code == 200
        clock.now += 2.0
        assert (await ask(ADMIN)).status_code == 200


async def test_a_body_over_the_limit_is_413_before_it_is_read(keyed: httpx.AsyncClient) -> None:
    h = bearer(ADMIN)
    small = RequestGuard(KeySources((make_key("admin", ADMIN),)), max_body_bytes=2048)
    async for client in client_for(small):
        big = chat_body("word " * 1000, model="planner")
        assert_openai_error(await client.post("/v1/chat/completions", json=big, headers=h), 413,
                            code="request_too_large")
        # Chunked (no Content-Length): refused once the bytes read pass the limit; the rest of
        # the body is never pulled from the client.
        pulled = 0

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal pulled
            for _ in range(100):
                pulled += 1
                yield b" " * 512
        resp = await client.post("/v1/chat/completions", content=chunks(),
                                 headers={**h, "content-type": "application/json"})
        assert_openai_error(resp, 413, code="request_too_large")
        assert pulled <= 6
        # Under the limit, chunked or not, the request goes through.
        ok = await client.post("/v1/chat/completions", json=chat_body(model="planner"), headers=h)
        assert ok.status_code == 200, ok.text
    # Without a key, nothing is read at all: 401 comes first.
    resp = await keyed.post("/v1/chat/completions", content=b"x" * 5_000_000)
    assert_openai_error(resp, 401)


async def test_a_rotated_keys_file_takes_effect(tmp_path: Path) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(ADMIN + "\n")
    clock = Clock()
    guard = RequestGuard(KeySources(file=keys_file), known_roles=ROLES, reload_s=5, clock=clock)
    async for client in client_for(guard):
        async def status(key: str) -> int:
            return (await client.get("/v1/models", headers=bearer(key))).status_code

        assert (await status(ADMIN), await status(PLANNER_ONLY)) == (200, 401)
        keys_file.write_text(f"{PLANNER_ONLY}:planner\n# admin key revoked\n")
        assert await status(ADMIN) == 200  # not re-read before reload_s
        clock.now += 5
        assert (await status(ADMIN), await status(PLANNER_ONLY)) == (401, 200)
        keys_file.write_text("short\n")  # a broken file keeps the previous keys
        clock.now += 5
        assert await status(PLANNER_ONLY) == 200


def test_auth_fails_closed_at_start(tmp_path: Path) -> None:
    empty = tmp_path / "keys"
    empty.write_text("# nothing yet\n")
    cfg = AppConfig.model_validate({"roles": [{"name": "planner"}],
                                    "auth": {"enabled": True, "keys_file": str(empty)}})
    with pytest.raises(KeyConfigError, match="no API key"):
        guard_from_config(cfg.auth, cfg.limits, ["planner"])
    empty.write_text(f"{ADMIN}:wizard\n")
    with pytest.raises(KeyConfigError, match="wizard"):
        guard_from_config(cfg.auth, cfg.limits, ["planner"])


def test_guard_from_config_reads_env_and_inline_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFILLSHARE_API_KEYS", f"{PLANNER_ONLY}:planner")
    cfg = AppConfig.model_validate({
        "roles": [{"name": "planner"}, {"name": "coder"}],
        "auth": {"enabled": True, "api_keys": [
            {"name": "ops", "key": ADMIN, "rate_limit": {"requests_per_s": 5, "burst": 1}}]},
        "limits": {"rate_limit": {"requests_per_s": 1}, "max_body_bytes": 4096}})
    assert ADMIN not in repr(cfg)
    guard = guard_from_config(cfg.auth, cfg.limits, ["planner", "coder"])
    assert guard.authenticate(f"Bearer {ADMIN}").rate_per_s == 5
    assert guard.authenticate(f"bearer {PLANNER_ONLY}").roles == {"planner"}
    assert guard.max_body_bytes == 4096 and guard.limiter is not None


async def test_a_keys_own_rate_limit_holds_without_a_default_limit() -> None:
    # Found by tests/e2e/test_security_e2e.py: a per-key limit was ignored unless
    # limits.rate_limit was set too.
    cfg = AppConfig.model_validate({
        "roles": [{"name": "planner"}],
        "auth": {"enabled": True, "keys_env": None, "api_keys": [
            {"name": "slow", "key": PLANNER_ONLY, "rate_limit": {"requests_per_s": 0.01,
                                                                "burst": 1}},
            {"name": "free", "key": ADMIN}]}})
    assert cfg.limits.rate_limit is None
    async for client in client_for(guard_from_config(cfg.auth, cfg.limits, ["planner"])):
        async def ask(key: str) -> int:
            return (await client.post("/v1/chat/completions", json=chat_body(model="planner"),
                                      headers=bearer(key))).status_code

        assert [await ask(PLANNER_ONLY) for _ in range(2)] == [200, 429]
        assert [await ask(ADMIN) for _ in range(5)] == [200] * 5  # no limit of its own


@pytest.mark.parametrize(("auth", "expected"), [
    ({"enabled": True, "keys_env": None}, "needs api_keys"),
    ({"api_keys": [{"name": "a", "key": ADMIN, "roles": ["wizard"]}]}, "unknown roles"),
    ({"api_keys": [{"name": "a", "key": ADMIN}, {"name": "a", "key": PLANNER_ONLY}]}, "duplicate"),
    ({"api_keys": [{"name": "a", "key": "short"}]}, "at least 16"),
])
def test_bad_auth_config_is_refused(auth: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        AppConfig.model_validate({"roles": [{"name": "planner"}], "auth": auth})


async def test_keys_and_prompts_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Success, refusals, validation errors, a backend failure and an unhandled error, all at
    DEBUG: neither the key nor the prompt text shows up in any log record."""
    secret_prompt = "the launch code is swordfish-7731"
    backend = FakeBackend()
    caplog.set_level(logging.DEBUG)
    async for client in client_for(keyed_guard(), backend):
        h = bearer(ADMIN)
        await client.post("/v1/chat/completions", json=chat_body(secret_prompt, model="planner"),
                          headers=h)
        await client.post("/v1/chat/completions", json=chat_body(secret_prompt, model="planner",
                                                                 stream=True), headers=h)
        await client.post("/v1/completions", json={"model": "coder", "prompt": secret_prompt},
                          headers=bearer(PLANNER_ONLY))
        await client.post("/v1/chat/completions", json=chat_body(secret_prompt, model="planner"),
                          headers=bearer(ADMIN[:-1] + "X"))
        await client.post("/v1/chat/completions", headers=h,
                          json=chat_body(secret_prompt, model="planner", temperature="hot"))
        backend.fail_with = ServingError("no decode replica is alive", 503)
        resp = await client.post("/v1/chat/completions", headers=h,
                                 json=chat_body(secret_prompt, model="planner"))
        assert resp.status_code == 503
        backend.fail_with = RuntimeError("boom")
        resp = await client.post("/v1/chat/completions", headers=h,
                                 json=chat_body(secret_prompt, model="planner"))
        assert resp.status_code == 500
    # caplog.text is the formatted output, tracebacks included.
    text = caplog.text + "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert caplog.records, "expected some log records (the 503 and the 500 are logged)"
    for secret in (ADMIN, PLANNER_ONLY, ADMIN[:-1] + "X", secret_prompt, "swordfish"):
        assert secret not in text
