"""The OpenAI-compatible HTTP API of the ingress, as a plain FastAPI app (no Ray here).

Runs in the ingress process: the Serve deployment wraps the app that ``build_api`` returns and
hands it a GenerationBackend that talks to the prefill and decode pools; tests hand it a fake.

An OpenAI ``model`` is an agent ROLE name. Each role also has its own base URL,
``/roles/<role>/v1``, so an agent framework can point one client per role at the server
without setting ``model`` at all.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from contract.prompt_layout import PromptBuilder, PromptTemplateError, role_suffix
from contract.roles import ServedRole
from contract.wire import GenerationDelta, ServingError
from router_service.backend import GenerationBackend, GenerationRequest
from router_service.completion_output import (
    ChatChunks,
    ChunkRenderer,
    Collected,
    CompletionChunks,
    RequestMeta,
    SSEResponse,
    chat_response,
    close_backend_stream,
    collect,
    completion_response,
    stream_events,
)
from router_service.errors import install_error_handlers, model_not_found
from router_service.guard import GuardMiddleware, RequestGuard, api_key_of
from router_service.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from router_service.openapi_doc import install_openapi
from router_service.role_table import RoleTable
from router_service.sampling_params import (
    chat_sampling,
    check_token_ids,
    completion_sampling,
    resolve_max_tokens,
)
from router_service.tool_calls import conversation_turns, plan_tools

REQUEST_ID_HEADER = "x-request-id"
# Prompt building renders every prefix of the conversation (prompt_builder), so its cost grows
# with the square of the message count: 500 one-word messages took 1.7 s here.
DEFAULT_MAX_MESSAGES = 256
# Proxies (nginx, some ingress controllers) buffer responses unless told not to, which would
# hold every token of a stream until the end.
_STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@dataclass(frozen=True)
class _Limits:
    max_model_len: int
    vocab_size: int | None
    max_messages: int = DEFAULT_MAX_MESSAGES


def build_api(backend: GenerationBackend, roles: Sequence[ServedRole] | RoleTable, tokenizer: Any,
              max_model_len: int, session_header: str = "x-session-id", *,
              guard: RequestGuard | None = None,
              max_messages: int = DEFAULT_MAX_MESSAGES) -> FastAPI:
    """The whole HTTP surface. ``roles``: the served roles (name, instructions and
    default_max_tokens are read), or a RoleTable the ingress replaces while it runs;
    ``tokenizer`` is the BASE model's transformers tokenizer (its chat template builds every
    role's prompt); ``max_model_len`` is the smallest context window on the serving path;
    ``guard`` checks API keys, rate and body size (router_service.guard; None: none of it)."""
    table = roles if isinstance(roles, RoleTable) else RoleTable(roles)
    if not len(table):
        raise ValueError("build_api needs at least one role")
    builder = PromptBuilder(tokenizer)
    vocab = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    limits = _Limits(max_model_len, vocab, max_messages)
    created = int(time.time())
    header = session_header.lower()

    app = FastAPI(title="PrefillShare", docs_url=None, redoc_url=None)
    if guard is not None:
        # Added before the error handlers' catch-all, so that one stays outermost.
        app.add_middleware(GuardMiddleware, guard=guard)
    install_error_handlers(app)
    install_openapi(app, table.names(), auth=guard is not None and guard.auth_enabled)

    def visible_roles(request: Request) -> list[str]:
        key = api_key_of(request.scope)
        return [n for n in table.names() if key is None or key.may_use(n)]

    def role_of(name: str | None, request: Request) -> ServedRole:
        if not name:
            raise ServingError("You must provide a model parameter (an agent role name).",
                           param="model", code="missing_model")
        role = table.get(name)
        if role is None:
            raise model_not_found(name, sorted(visible_roles(request)))
        key = api_key_of(request.scope)
        if key is not None and not key.may_use(role.name):
            raise ServingError(f"The API key {key.name} may not use the model `{role.name}`.",
                           status_code=403, param="model", code="model_not_allowed")
        return role

    def session_of(request: Request, user: str | None) -> str | None:
        return request.headers.get(header) or user or None

    async def respond(gen: GenerationRequest, stream: bool, usage_in_stream: bool,
                      chunks: ChunkRenderer, whole: Callable[[Collected], BaseModel]) -> Response:
        """Starts generation, then answers with SSE chunks or one body (the same for chat and
        completions; ``chunks`` and ``whole`` give each its OpenAI shape)."""
        deltas, first = await _start(backend, gen)
        headers = {REQUEST_ID_HEADER: gen.request_id}
        if stream:
            events = stream_events(first, deltas, chunks, len(gen.prompt_token_ids),
                                   usage_in_stream, gen.n)
            return SSEResponse(events, headers={**headers, **_STREAM_HEADERS})
        out = await collect(first, deltas, gen.n)
        return JSONResponse(whole(out).model_dump(mode="json"), headers=headers)

    def max_tokens_of(role: ServedRole, requested: int | None, prompt_len: int,
                      prompt_param: str = "messages") -> int:
        return resolve_max_tokens(requested, prompt_len, limits.max_model_len,
                                  role.default_max_tokens,
                                  prompt_param=prompt_param)

    async def chat(role: ServedRole, body: ChatCompletionRequest, request: Request) -> Response:
        request.state.metrics_role = role.name  # the label router_service/metering.py uses
        if len(body.messages) > limits.max_messages:
            raise ServingError(f"At most {limits.max_messages} messages are accepted in one "
                               f"request; got {len(body.messages)}.", param="messages",
                               code="too_many_messages")
        tools = plan_tools(body, tokenizer)
        # Tokenized on the event loop on purpose: a few ms at most, and a fast tokenizer
        # shared across threads fails with "Already borrowed" under concurrent use.
        try:
            prompt = builder.chat_prompt(conversation_turns(body.messages),
                                         role_suffix(role.instructions, tools.rendered_tools))
        except PromptTemplateError as exc:
            raise ServingError(str(exc), param="messages") from exc
        ids = prompt.token_ids
        max_tokens = max_tokens_of(role, body.requested_max_tokens(), len(ids))
        sampling = chat_sampling(body, max_tokens, limits.vocab_size, tools.structured_output)
        meta = RequestMeta(f"chatcmpl-{uuid.uuid4().hex}", role.name, len(ids))
        want_logprobs = bool(body.logprobs)
        return await respond(
            GenerationRequest(meta.request_id, role.name, ids, sampling,
                              session_of(request, body.user), body.choices()),
            body.stream, body.wants_usage_in_stream(), ChatChunks(meta, want_logprobs, tools),
            lambda out: chat_response(meta, out, want_logprobs, tools))

    async def complete(role: ServedRole, body: CompletionRequest, request: Request) -> Response:
        request.state.metrics_role = role.name
        raw = body.prompt_text_or_ids()
        if not isinstance(raw, str) and limits.vocab_size is not None:
            check_token_ids(raw, limits.vocab_size)
        ids = builder.completion_prompt(raw).token_ids
        max_tokens = max_tokens_of(role, body.max_tokens, len(ids), prompt_param="prompt")
        sampling = completion_sampling(body, max_tokens, limits.vocab_size)
        meta = RequestMeta(f"cmpl-{uuid.uuid4().hex}", role.name, len(ids))
        want_logprobs = body.logprobs is not None
        return await respond(
            GenerationRequest(meta.request_id, role.name, ids, sampling,
                              session_of(request, body.user), body.choices()),
            body.stream, body.wants_usage_in_stream(), CompletionChunks(meta, want_logprobs),
            lambda out: completion_response(meta, out, want_logprobs))

    def model_list(names: Sequence[str]) -> dict[str, Any]:
        cards = [ModelCard(id=n, created=created) for n in names]
        return ModelList(data=cards).model_dump(mode="json")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await chat(role_of(body.model, request), body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await complete(role_of(body.model, request), body, request)

    @app.post("/roles/{role}/v1/chat/completions")
    async def role_chat_completions(role: str, body: ChatCompletionRequest,
                                    request: Request) -> Response:
        # The path names the role; a `model` in the body is whatever the client library put
        # there and is not consulted.
        return await chat(role_of(role, request), body, request)

    @app.post("/roles/{role}/v1/completions")
    async def role_completions(role: str, body: CompletionRequest, request: Request) -> Response:
        return await complete(role_of(role, request), body, request)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        # Only the roles the caller's key may use (all of them with auth off).
        return model_list(visible_roles(request))

    @app.get("/v1/models/{model}")
    async def get_model(model: str, request: Request) -> dict[str, Any]:
        return ModelCard(id=role_of(model, request).name, created=created).model_dump(mode="json")

    @app.get("/roles/{role}/v1/models")
    async def list_role_models(role: str, request: Request) -> dict[str, Any]:
        return model_list([role_of(role, request).name])

    @app.post("/v1/responses", include_in_schema=False)
    @app.post("/roles/{role}/v1/responses", include_in_schema=False)
    async def responses() -> Response:
        # Stored responses (previous_response_id) would live in one ingress replica's memory
        # while a session's calls spread over replicas; agent SDKs speak chat completions too.
        raise ServingError(
            "The Responses API is not served here: use /v1/chat/completions. With the OpenAI "
            "Agents SDK, call agents.set_default_openai_api(\"chat_completions\") or use "
            "OpenAIChatCompletionsModel.", 404, code="unsupported_endpoint")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def _start(backend: GenerationBackend,
                 request: GenerationRequest) -> tuple[AsyncIterator[GenerationDelta],
                                                      GenerationDelta | None]:
    """Wait for the first delta before answering, so that a backend that fails at once
    (no replica, bad request) yields a real HTTP status instead of an error inside a 200."""
    deltas = backend.generate(request)
    try:
        first = await anext(deltas, None)
    except BaseException:
        await close_backend_stream(deltas)
        raise
    return deltas, first
