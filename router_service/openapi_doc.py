"""The API's OpenAPI document, made to describe what the server really does.

Runs in the ingress process (FastAPI builds the document on the first /openapi.json). FastAPI
documents a 422 with its own validation dump and an untyped 200; this server answers 400 and
every other error with OpenAI's error body, returns typed completions (JSON or an SSE stream),
and accepts only its role names as ``model``. Clients generating code from the spec, and the
schemathesis fuzz test (tests/test_api_fuzz.py), see the real contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from router_service.openai_schema import (
    ChatCompletionResponse,
    CompletionResponse,
    ModelCard,
    ModelList,
)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


_ERRORS = {
    400: "Invalid request (the message names the field)",
    401: "Missing or wrong API key",
    403: "This API key may not use this role",
    404: "Unknown role or path",
    413: "Request body over the size limit",
    429: "Rate limit reached (see Retry-After)",
    500: "Internal error",
    503: "No replica could serve the request (retryable)",
    504: "A serving stage timed out (the code names it)",
}
_GENERATION_ERRORS = (400, 403, 404, 413, 429, 500, 503, 504)
_READ_ERRORS = (403, 404, 429, 500)
# Each server-sent event: `data:` holds one JSON chunk (or an error body), the last one [DONE].
_SSE = {"schema": {"type": "object", "required": ["data"],
                   "properties": {"data": {"type": "string"}},
                   "description": "One JSON chunk per `data:` event, then `data: [DONE]`."}}


def install_openapi(app: FastAPI, roles: Sequence[str], *, auth: bool,
                    open_paths: Sequence[str] = ("/health",)) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            refine(doc, list(roles), auth, set(open_paths))
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def refine(doc: dict[str, Any], roles: list[str], auth: bool, open_paths: set[str]) -> None:
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for model in (ErrorResponse, ChatCompletionResponse, CompletionResponse, ModelList, ModelCard):
        js = model.model_json_schema(ref_template="#/components/schemas/{model}",
                                     mode="serialization")
        schemas.update(js.pop("$defs", {}))
        schemas[model.__name__] = js
    role_enum = {"type": "string", "enum": roles}
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = schemas.get(name, {}).get("properties", {})
        if "model" in props:
            props["model"] = {"anyOf": [role_enum, {"type": "null"}],
                              "description": "An agent role (not needed on /roles/{role}/...)."}
    if auth:
        doc["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            _refine_operation(path, method, op, role_enum, auth and path not in open_paths)


def _refine_operation(path: str, method: str, op: dict[str, Any], role_enum: dict[str, Any],
                      needs_key: bool) -> None:
    responses = op.setdefault("responses", {})
    responses.pop("422", None)
    for param in op.get("parameters", []):
        if param.get("in") == "path" and param.get("name") in ("role", "model"):
            param["schema"] = dict(role_enum)
    ok = responses.setdefault("200", {"description": "Successful Response"})
    if path.endswith("/chat/completions"):
        ok["content"] = {"application/json": {"schema": _ref("ChatCompletionResponse")},
                         "text/event-stream": _SSE}
    elif path.endswith("/completions"):
        ok["content"] = {"application/json": {"schema": _ref("CompletionResponse")},
                         "text/event-stream": _SSE}
    elif path.endswith("/models"):
        ok["content"] = {"application/json": {"schema": _ref("ModelList")}}
    elif "/models/" in path:
        ok["content"] = {"application/json": {"schema": _ref("ModelCard")}}
    codes = list(_GENERATION_ERRORS if method == "post" else
                 _READ_ERRORS if ("/models" in path or "{" in path) else (500,))
    if needs_key:
        codes.append(401)
        op["security"] = [{"apiKey": []}]
    if method == "post":
        codes.append(413)
    for code in sorted(set(codes)):
        responses[str(code)] = {"description": _ERRORS[code],
                                "content": {"application/json": {"schema": _ref("ErrorResponse")}}}
