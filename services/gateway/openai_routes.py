"""OpenAI-compatible routes under /v1/: chat completions (streamed as server-sent events or not), models, embeddings;
every failure as OpenAI's error body."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute

from contracts.catalog import Caller, CatalogModelsRequest, RolesRequest
from contracts.router import RouteReply
from contracts.rpc import RpcError
from services.gateway import metrics
from services.gateway import openai_wire as wire
from services.gateway.auth import caller
from services.gateway.backends import BACKEND_LABEL, BackendError, ChatCall
from services.gateway.bus_client import bus_of
from services.gateway.dataplane import DataPlane, NoBackendAnswered, Opened, Served
from services.gateway.errors import invalid_json

#: OpenAPI: the error answers of every /v1/ route.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": wire.OpenAIError, "description": description}
    for status, description in {
        400: "The body is not valid JSON, or the backend refused the request (`code` `backend_refused`, its status)",
        401: "No valid bearer token (`authentication_error`)",
        404: "Unknown role or profile (`code` `not_found`, `param` names the field)",
        422: "Invalid request (`param` names the first field at fault)",
        429: "Every backend of the chain is at its concurrency limit or answered 429 (`code` `rate_limited`, "
        "`Retry-After` set)",
        502: "The backend failed (`code` `upstream_failed`)",
        503: "No backend serves the role, or every backend of the chain failed (`code` `no_backend`, naming the role)",
        504: "The router or catalog did not answer in time (`code` `timeout`)",
    }.items()
}


def openai_error(
    status: int, message: str, code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(wire.error_body(status, message, code, param), status_code=status, headers=headers)


class OpenAIRoute(APIRoute):
    """Stamps the request's arrival (the overhead header counts from it) and answers every failure — auth, request
    validation, the router's typed errors — as OpenAI's `{"error": {...}}`, which the control plane does not use."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_handler(request: Request) -> Response:
            return await answer_openai(request, time.perf_counter(), lambda: handler(request))

        return openai_handler


async def answer_openai(request: Request, arrived: float, handle: Callable[[], Awaitable[Response]]) -> Response:
    """`handle()`'s answer to a /v1/ request that arrived at `arrived`, its exchange measured (chat, embeddings), and
    every failure as OpenAI's error body: what each /v1/ route answers through, the chat fast path included."""
    request.state.arrived = arrived
    operation = metrics.OPERATIONS.get(request.scope["path"])
    exchange = metrics.Exchange(operation, arrived) if operation else None
    request.state.exchange = exchange
    try:
        response = await _openai_errors(request, handle)
    except Exception as exc:  # left to the app's handlers (a 500 for most): counted as one, by its class
        if exchange is not None:
            exchange.finish(500, type(exc).__name__)
        raise
    if exchange is not None and not isinstance(response, StreamingResponse):  # a stream finishes at its end
        exchange.finish(response.status_code)
    return response


async def _openai_errors(request: Request, handle: Callable[[], Awaitable[Response]]) -> Response:
    try:
        return await handle()
    except NoBackendAnswered as exc:
        headers = {"Retry-After": exc.retry_after} if exc.retry_after else None
        return openai_error(exc.status, str(exc.detail), exc.code, exc.field, headers)
    except RpcError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status == 429:  # the router's `rate_limited`: every backend is at its concurrency limit
            headers = {"Retry-After": str(plane_of(request).busy_retry_after_s)}
        return openai_error(exc.status, str(exc.detail), exc.code, exc.field, headers)
    except RequestValidationError as exc:
        if (not_json := invalid_json(exc)) is not None:
            return openai_error(400, not_json, "invalid_json")
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}"
                            for e in exc.errors())  # fmt: skip
        return openai_error(422, message, "invalid_request", param)
    except HTTPException as exc:
        code = "invalid_api_key" if exc.status_code == 401 else None
        return openai_error(exc.status_code, str(exc.detail), code, None, dict(exc.headers or {}) or None)


#: The /v1/ paths this gateway serves, and their method (the `Allow` of a 405).
SERVED = {"chat/completions": "POST", "models": "GET", "embeddings": "POST"}

router = APIRouter(route_class=OpenAIRoute, tags=["openai"], responses=ERRORS)


def plane_of(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.plane
    return plane


def _headers(request: Request, reply: RouteReply, served: Served[Any]) -> dict[str, str]:
    backend = served.target.backend
    reason = f"{reply.reason.tier}/{reply.reason.strategy}" if reply.reason else "unknown"
    if reply.reason and reply.reason.fail_open:
        reason += " fail_open"
    if reply.fallback:
        reason += " fallback_model"
    if served.retries:
        reason += f" retried={served.retries}"
    overhead = (time.perf_counter() - request.state.arrived) * 1000 - served.backend_ms
    label = served.value.pop(BACKEND_LABEL, None) if isinstance(served.value, dict) else None
    if (exchange := metrics.exchange_of(request.state)) is not None:
        exchange.served(backend.host_id, backend.kind, reason.split(" ")[0], served.retries, overhead / 1000,
                        served.last_ms / 1000)  # fmt: skip
    return {
        "x-modelfleet-backend": label or f"{backend.host_id} {backend.base_url}",
        "x-modelfleet-route-reason": reason,
        "x-modelfleet-overhead-ms": f"{max(overhead, 0.0):.3f}",
    }


@router.post(
    "/v1/chat/completions",
    responses={200: {"description": "A `chat.completion`, or with `stream: true` `text/event-stream` chunks ending "
                     "in `data: [DONE]`", "content": {"text/event-stream": {}}}},
)  # fmt: skip
async def chat_completions(
    request: Request,
    body: wire.ChatCompletionRequest,
    who: Caller = Depends(caller),
    performance_profile: str | None = Header(
        None,
        alias="x-modelfleet-performance-profile",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="A catalog performance profile to apply (docs/catalog.md#resolution).",
    ),
) -> Response:
    """OpenAI's chat completions. `model` is a role (`coding`, `role:coding`), a profile id or a model name; the
    request's temperature, top_p, max_tokens, stop and seed are the top layer of the resolved parameters; the
    header `x-modelfleet-performance-profile` names a performance profile (below the profile layer)."""
    plane = plane_of(request)
    estimate = wire.estimate_prompt_tokens(body.messages)
    reply = await plane.route(
        body.model, who.user_id, body.route_options(), estimate, performance_profile=performance_profile
    )
    exchange = metrics.exchange_of(request.state)
    if exchange is not None:
        exchange.routed(body.model, reply.role)
    call = ChatCall(
        client_model=body.model, messages=wire.with_system_prompt(body.messages, reply.system_prompt),
        options=reply.options, include_usage=body.include_usage, passthrough=body.passthrough(),
    )  # fmt: skip
    if not body.stream:
        served = await plane.complete(reply, call)
        headers = _headers(request, reply, served)
        if exchange is not None:
            used = served.value.get("usage") or {}
            exchange.tokens(int(used.get("prompt_tokens") or 0), int(used.get("completion_tokens") or 0),
                            served.last_ms / 1000)  # fmt: skip
        return JSONResponse(served.value, headers=headers)
    opened = await plane.open_stream(reply, call)
    first_at = time.perf_counter()
    headers = {**_headers(request, reply, opened.served), "Cache-Control": "no-cache"}
    if exchange is not None:
        exchange.first_token(first_at)
    tally = wire.UsageTally(wire.estimate_prompt_tokens(body.messages, reply.system_prompt))
    measure = _StreamEnd(exchange, first_at - opened.served.last_ms / 1000)
    return StreamingResponse(
        _events(opened, tally, call.include_usage, measure), media_type="text/event-stream", headers=headers
    )


class _StreamEnd:
    """Records a stream's tokens, rate and duration when it ends (`call_started`: when the answering call began)."""

    def __init__(self, exchange: metrics.Exchange | None, call_started: float):
        self.exchange = exchange
        self.call_started = call_started

    def __call__(self, tally: wire.UsageTally, error: str | None) -> None:
        if self.exchange is None:
            return
        prompt, completion = tally.counts()
        self.exchange.tokens(prompt, completion, time.perf_counter() - self.call_started)
        self.exchange.finish(200, error)


async def _events(
    opened: Opened, tally: wire.UsageTally, include_usage: bool, measure: _StreamEnd
) -> AsyncIterator[bytes]:
    """The server-sent events: the chunks as they come; once streaming has begun a failure is an error event, then
    `[DONE]`, never a silent cut. Leaving early (the client went away) closes the backend request."""
    error: str | None = None
    try:
        tally.observe(opened.served.value)
        yield wire.sse(opened.served.value)
        async for item in opened.rest:
            tally.observe(item)
            yield wire.sse(item)
        if include_usage and (final := tally.final()) is not None:
            yield wire.sse(final)
    except BackendError as exc:
        error = exc.outcome
        yield wire.sse(wire.error_body(502, f"the backend failed mid-stream: {exc}", exc.outcome))
    finally:
        measure(tally, error)
        await opened.rest.aclose()  # type: ignore[attr-defined]
    yield wire.DONE


@router.get("/v1/models", response_model=wire.ModelList)
async def list_models(request: Request, who: Caller = Depends(caller)) -> JSONResponse:
    """The roles of the active profile set, then the library's models, in OpenAI's list format."""
    bus = bus_of(request)
    roles = await bus.ask(RolesRequest())
    models = await bus.ask(CatalogModelsRequest())
    ids = [r.role for r in roles.roles] + [m.id for m in models.models]
    return JSONResponse(wire.model_list(ids))


@router.post("/v1/embeddings")
async def embeddings(request: Request, body: wire.EmbeddingsRequest, who: Caller = Depends(caller)) -> JSONResponse:
    """Vectors from Ollama's /api/embed or an OpenAI-compatible backend's /embeddings; `encoding_format` float or
    base64 (what the official client asks by default)."""
    plane = plane_of(request)
    reply = await plane.route(body.model, who.user_id)
    exchange = metrics.exchange_of(request.state)
    if exchange is not None:
        exchange.routed(body.model, reply.role)
    served = await plane.embed(reply, body.texts)
    vectors, prompt_tokens = served.value
    if body.dimensions:
        vectors = [v[: body.dimensions] for v in vectors]
    doc = wire.embedding_list(vectors, body.model, prompt_tokens, body.encoding_format)
    headers = _headers(request, reply, served)
    if exchange is not None:
        exchange.tokens(prompt_tokens, None)
    return JSONResponse(doc, headers=headers)


@router.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
async def unknown(path: str, request: Request) -> JSONResponse:
    """Anything else under /v1/ is an OpenAI-shaped 404 (405 with `Allow` for a served path asked with another
    method), not FastAPI's `{"detail": ...}`."""
    if (allowed := SERVED.get(path.strip("/"))) is not None:
        return openai_error(405, f"{request.method} /v1/{path}: this path takes {allowed}", "method_not_allowed",
                            headers={"Allow": allowed})  # fmt: skip
    return openai_error(404, f"no route /v1/{path} (this gateway serves chat/completions, models, embeddings)",
                        "unknown_url")  # fmt: skip
