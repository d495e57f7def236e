"""OpenAI-style error bodies and the FastAPI handlers that produce them.

Runs in the ingress process. Every failure a client can see has the shape OpenAI's API uses,
``{"error": {"message", "type", "param", "code"}}``, so that official clients raise their usual
exception classes (``BadRequestError``, ``NotFoundError`` ...) instead of choking on a body.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.wire import INVALID_REQUEST, SERVER_ERROR, ServingError, error_body

log = logging.getLogger(__name__)

def model_not_found(role: str, known: list[str]) -> ServingError:
    return ServingError(
        f"The model `{role}` does not exist. Available models (agent roles): {', '.join(known)}",
        status_code=404, param="model", code="model_not_found",
    )


def context_length_exceeded(message: str, param: str | None = "messages") -> ServingError:
    return ServingError(message, param=param, code="context_length_exceeded")


def client_facing(exc: ServingError) -> ServingError:
    """A status outside 4xx/5xx would read as success to a client: serve it as a 500."""
    if 400 <= exc.status_code <= 599:
        return exc
    return ServingError(exc.message or "the serving path failed", 500, exc.error_type,
                        code=exc.code)


# pydantic names the union member that failed inside `loc` ("str", "list[int]" ...); a client
# knows its field by path only.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _field_path(loc: Sequence[Any]) -> list[str]:
    return [str(p) for p in loc
            if p != "body" and not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS))]


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable line naming the offending field, as OpenAI's own 400s do."""
    errors = list(exc.errors())
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"We could not parse the JSON body of your request: {first.get('msg')}", None
    # A value that fits no member of a union fails once per member: report them as one
    # problem at their common path, with the most specific member's message.
    head = _field_path(first.get("loc", ()))[:1]
    related = [e for e in errors if _field_path(e.get("loc", ()))[:1] == head]
    paths = [_field_path(e.get("loc", ())) for e in related]
    common: list[str] = os.path.commonprefix(paths)  # element-wise on lists, too
    specific = max(zip(paths, related), key=lambda pe: len(pe[0]))[1]
    param = ".".join(common) or None
    # pydantic prefixes custom ValueError messages; the client does not need to see that.
    msg = str(specific.get("msg", "invalid value")).removeprefix("Value error, ")
    text = f"Invalid value for '{param}': {msg}" if param else msg
    others = len(errors) - len(related)
    if others:
        text += f" (and {others} more problem{'s' if others > 1 else ''})"
    return text, param


async def _on_serving_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    if exc.status_code >= 500:
        log.warning("serving error: %s (status %s, code %s)", exc, exc.status_code, exc.code)
    out = client_facing(exc)
    return JSONResponse(out.body(), status_code=out.status_code, headers=out.headers or None)


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = _validation_message(exc)
    return JSONResponse(error_body(message, param=param), status_code=400)


async def _on_http_exception(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error_type = INVALID_REQUEST if exc.status_code < 500 else SERVER_ERROR
    code = "not_found" if exc.status_code == 404 else None
    return JSONResponse(error_body(str(exc.detail), error_type, code=code),
                        status_code=exc.status_code, headers=exc.headers)


class CatchAllMiddleware:
    """Turns any exception no handler claimed into a generic 500 and never re-raises it.

    Starlette's own ``Exception`` handler answers 500 but then re-raises, which crashes test
    transports and fills server logs twice; internals (messages, tracebacks) never reach the
    client either way.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except ClientDisconnect:
            return  # nobody is left to answer; the stream's own cleanup already ran
        except Exception:
            log.exception("unhandled error in the API")
            if started:
                return  # headers are gone; the client sees a cut-off body
            response = JSONResponse(
                error_body("The server had an error while processing your request.", SERVER_ERROR),
                status_code=500,
            )
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServingError, _on_serving_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_middleware(CatchAllMiddleware)


def sse_error_event(exc: BaseException) -> str:
    """An error inside a stream that already sent 200: OpenAI clients raise on this event."""
    if isinstance(exc, ServingError):
        body = client_facing(exc).body()
    else:
        body = error_body("The server had an error while processing your request.", SERVER_ERROR)
    return f"data: {json.dumps(body)}\n\n"
