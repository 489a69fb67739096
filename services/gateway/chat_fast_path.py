"""`POST /v1/chat/completions` without FastAPI's per-request machinery for the plain case, the data plane's hot path.

FastAPI's route for chat completions (`openai_routes.chat_completions`) is what the OpenAPI document describes and
what answers every request that is not plain. A plain request is a JSON body that `ChatCompletionRequest` takes and
no `x-modelfleet-performance-profile` header other than a well-formed one: this path validates it with pydantic
directly (`model_validate_json`), authenticates it with the same `caller`, and answers it with the very function
FastAPI's route calls, through the same error mapping and measurements (`answer_openai`). Anything else — a body
that is not JSON or not valid, another content type, a malformed header — goes, with the body read so far, to
FastAPI's route, which answers it exactly as it always has (the same 422 and its `param`, the same 401).

It sits inside the app: the middlewares (the error middlewares; OpenTelemetry's server span and HTTP measurements, or
for a request no trace covers the same measurements made past it, services/gateway/server_measures.py) see it like
any route. On the 2-core development machine it took a tenth to a seventh of the gateway's
CPU per completion out (docs/gateway.md "What it costs").
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from services.gateway import openai_routes
from services.gateway import openai_wire as wire
from services.gateway.auth import caller
from services.gateway.openai_routes import answer_openai, chat_completions

PATH = "/v1/chat/completions"
PROFILE_HEADER = "x-modelfleet-performance-profile"
#: The header's pattern as FastAPI's route declares it (a malformed one is that route's 422).
_PROFILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ChatFastPath:
    """The ASGI endpoint of `POST /v1/chat/completions`: plain requests answered here, the rest by `full` (FastAPI's
    own route for the path)."""

    def __init__(self, full: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.full = full

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = time.perf_counter()
        request = Request(scope, receive)
        raw = await request.body()
        plain = _plain(request, raw)
        if plain is None:
            await self.full(scope, _replay(raw, receive), send)
            return
        body, profile = plain

        async def handle() -> Any:
            return await chat_completions(request, body, await caller(request), profile)

        response = await answer_openai(request, arrived, handle)
        await response(scope, receive, send)


def _plain(request: Request, raw: bytes) -> tuple[wire.ChatCompletionRequest, str | None] | None:
    """The validated body and performance profile of a plain request; None for anything FastAPI's route must judge."""
    content_type = request.headers.get("content-type")
    if content_type is not None and content_type.split(";", 1)[0].strip().lower() != "application/json":
        return None
    profile = request.headers.get(PROFILE_HEADER)
    if profile is not None and not _PROFILE.match(profile):
        return None
    try:
        return wire.ChatCompletionRequest.model_validate_json(raw), profile
    except ValidationError:
        return None


def _replay(raw: bytes, receive: Receive) -> Receive:
    """`receive` with the body already read given back first, whole (then the client's next messages: a
    disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


def install(app: FastAPI) -> None:
    """Route `POST /v1/chat/completions` through the fast path, ahead of FastAPI's route for it (which stays in the
    OpenAPI document and answers what the fast path does not take)."""
    full = next(
        r for r in openai_routes.router.routes
        if isinstance(r, APIRoute) and r.path == PATH and "POST" in (r.methods or ())
    )  # fmt: skip
    app.router.routes.insert(0, Route(PATH, ChatFastPath(full.app), methods=["POST"], include_in_schema=False))
