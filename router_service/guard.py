"""The ingress's front door: API key check (401), per-key rate limit (429) and request body size
limit (413), as one ASGI middleware in front of the OpenAI routes.

Runs in the ingress process. The checks run in that order, on headers alone where possible:
a request without a valid key is refused before any of its body is read, and a body larger
than the limit is refused as soon as its Content-Length says so, or, for a chunked body, as
soon as the bytes read pass the limit (the rest is never read). The role check (403) needs the
parsed body's ``model`` and happens in the route (router_service.api), with the key this
middleware leaves in the request scope.

Paths in ``open_paths`` (``/health``) need no key: liveness probes carry none, and the answer
tells nothing. Key and body contents are never logged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.wire import ServingError
from router_service.auth import ApiKey, KeyConfigError, KeySources, KeyStore, make_key
from router_service.rate_limit import RateLimiter

if TYPE_CHECKING:
    from contract.config import AuthConfig, LimitsConfig

log = logging.getLogger(__name__)

# Where the authenticated key (router_service.auth.ApiKey, or None with auth off) is left in
# the ASGI scope for the routes.
API_KEY_SCOPE = "prefillshare.api_key"
ANONYMOUS = "anonymous"
DEFAULT_MAX_BODY_BYTES = 1 << 20


@dataclass
class RequestGuard:
    """What the middleware enforces. ``sources`` None: auth off; ``limiter`` None: no limit."""

    sources: KeySources | None = None
    limiter: RateLimiter | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    known_roles: Collection[str] = ()
    open_paths: frozenset[str] = frozenset({"/health"})
    reload_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _store: KeyStore | None = field(default=None, init=False, repr=False)
    _stamp: tuple[float, int] | None = field(default=None, init=False, repr=False)
    _checked: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.sources is not None:
            # Fail closed at startup: auth on with no usable key would refuse everything, or,
            # worse, look like it works; a bad entry names itself here.
            self._store = self._load()
            if not len(self._store):
                raise KeyConfigError("auth is enabled but no API key was found in the config, "
                                     "the environment variable or the keys file")
            self._stamp = self.sources.file_stamp()
            self._checked = self.clock()

    @property
    def auth_enabled(self) -> bool:
        return self.sources is not None

    def _load(self) -> KeyStore:
        assert self.sources is not None
        store = self.sources.load()
        if self.known_roles:
            store.check_roles(self.known_roles)
        return store

    def _maybe_reload(self, now: float) -> None:
        """Re-reads a changed keys file at most every ``reload_s``; a bad file keeps the old keys."""
        if self.sources is None or self.sources.file is None or now - self._checked < self.reload_s:
            return
        self._checked = now
        stamp = self.sources.file_stamp()
        if stamp == self._stamp:
            return
        try:
            store = self._load()
        except KeyConfigError as exc:
            log.warning("keeping the previous API keys: %s", exc)
            return
        if not len(store):
            log.warning("keeping the previous API keys: the new keys file holds none")
            return
        self._store, self._stamp = store, stamp
        log.info("API keys reloaded from %s: %d keys", self.sources.file, len(store))

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key of a request, or a 401 ServingError."""
        now = self.clock()
        self._maybe_reload(now)
        assert self._store is not None
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ServingError("You didn't provide an API key. Send it in the Authorization "
                               "header: `Authorization: Bearer YOUR_KEY`.", 401,
                               code="missing_api_key", headers={"www-authenticate": "Bearer"})
        key = self._store.authenticate(token)
        if key is None:
            raise ServingError("Incorrect API key provided.", 401, code="invalid_api_key",
                               headers={"www-authenticate": 'Bearer error="invalid_token"'})
        return key

    def check_rate(self, key: ApiKey | None) -> None:
        if self.limiter is None:
            return
        name = key.name if key else ANONYMOUS
        wait = self.limiter.take(name, self.clock(), key.rate_per_s if key else None,
                                 key.burst if key else None)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise ServingError(
                f"Rate limit reached for {name}: retry in {seconds} s.", 429, "requests",
                code="rate_limit_exceeded",
                headers={"retry-after": str(seconds), "retry-after-ms": str(math.ceil(wait * 1000))})


def too_large(limit: int) -> ServingError:
    return ServingError(f"The request body is larger than this server's limit of {limit} bytes.",
                        413, code="request_too_large")


class GuardMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): streaming responses and disconnects pass untouched."""

    def __init__(self, app: ASGIApp, guard: RequestGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self.guard
        headers = Headers(scope=scope)
        try:
            key = None
            if guard.auth_enabled and scope["path"] not in guard.open_paths:
                key = guard.authenticate(headers.get("authorization"))
            if scope["path"] not in guard.open_paths:
                guard.check_rate(key)
            body = await _read_body(receive, headers, guard.max_body_bytes)
        except ServingError as refusal:
            # Answered here, before the app's handlers: the request never reaches a route.
            await JSONResponse(refusal.body(), status_code=refusal.status_code,
                               headers=refusal.headers)(scope, receive, send)
            return
        if body is None:
            return  # the client left while sending; nobody to answer
        scope[API_KEY_SCOPE] = key
        await self.app(scope, _replay(body, receive), send)


async def _read_body(receive: Receive, headers: Headers, limit: int) -> bytes | None:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, then the real channel (a streaming route listens there for disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def api_key_of(scope: dict[str, Any]) -> ApiKey | None:
    return scope.get(API_KEY_SCOPE)


def guard_from_config(auth: AuthConfig, limits: LimitsConfig,
                      known_roles: Collection[str]) -> RequestGuard:
    """The guard the ingress runs with; reads the keys env var and file now (fails closed)."""
    sources = None
    if auth.enabled:
        configured = tuple(
            make_key(k.name, k.key, k.roles, where=f"auth.api_keys.{k.name}",
                     rate_per_s=k.rate_limit.requests_per_s if k.rate_limit else None,
                     burst=k.rate_limit.burst if k.rate_limit else None)
            for k in auth.api_keys)
        sources = KeySources(configured, auth.keys_env,
                             Path(auth.keys_file) if auth.keys_file else None)
    limiter = None
    default = limits.rate_limit
    # A key's own limit holds even without a default one (then other keys are unlimited).
    if default is not None or (auth.enabled and any(k.rate_limit for k in auth.api_keys)):
        limiter = (RateLimiter(default.requests_per_s, default.burst) if default is not None
                   else RateLimiter(None))
    return RequestGuard(sources, limiter, limits.max_body_bytes, frozenset(known_roles),
                        reload_s=auth.reload_s)
