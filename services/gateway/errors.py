"""The gateway's error body: a failed bus hop (`RpcError`) as HTTP, with its status, code and field intact."""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts.rpc import RpcError


class ErrorResponse(BaseModel):
    """What every failed route answers: `detail` for people, `code` and `field` for programs."""

    detail: str | list[dict[str, Any]] = Field(
        description="What went wrong, naming the field; a list of errors when the gateway refused the request's shape."
    )
    code: str | None = Field(
        default=None, description="Stable machine code from the service (`not_found`, `invalid_request`, `timeout`…)."
    )
    field: str | None = Field(default=None, description="Dotted path of the request field at fault, when one is.")


#: The error answers of the routes that ask a service, for their OpenAPI `responses`.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "The body is not valid JSON",
        401: "No valid bearer token (with `WWW-Authenticate: Bearer`); `detail` says unknown, revoked or expired",
        403: "The token may not do this",
        404: "Not found; `field` names the part of the request",
        409: "Conflicts with the current state",
        413: "The body is larger than the route takes",
        422: "Invalid request; `field` names the first field at fault",
        429: "Every backend is at its concurrency limit (`code`: `rate_limited`)",
        502: "An upstream the service asked (the hub, a host's Ollama) failed (`code`: `upstream_failed`)",
        503: "NATS or the service is unavailable (`code`: `bus_unavailable`, `no_responders`, `unavailable`)",
        504: "The service did not answer in time (`code`: `timeout`)",
    }.items()
}


async def rpc_error_response(request: Request, exc: Exception) -> JSONResponse:
    """The exception handler for `RpcError`: the same status, and `{"detail", "code", "field"}`."""
    assert isinstance(exc, RpcError)
    body = exc.body
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None  # RFC 6750: a 401 names its scheme
    error = ErrorResponse(detail=body.detail, code=body.code, field=body.field)
    return JSONResponse(error.model_dump(mode="json"), status_code=body.status, headers=headers)


def invalid_json(exc: RequestValidationError) -> str | None:
    """What is wrong with a body that is not JSON at all (FastAPI's `json_invalid`, whose `loc` is the character
    offset), worded for the client; None when the body parsed and some field is at fault."""
    for e in exc.errors():
        if e.get("type") == "json_invalid":
            loc = e.get("loc", ())
            where = f" at character {loc[1]}" if len(loc) > 1 else ""
            why = (e.get("ctx") or {}).get("error") or e.get("msg") or "JSON decode error"
            return f"the body is not valid JSON: {why}{where}"
    return None


async def validation_error_response(request: Request, exc: Exception) -> JSONResponse:
    """The control plane's 422 for a request FastAPI refused by its shape: `detail` lists every error, `field` names
    the first (`query.host`, `body.timeout_s`), `code` is `invalid_request`. A body that is not JSON at all is a 400
    `invalid_json` saying where it stops parsing."""
    assert isinstance(exc, RequestValidationError)
    if (not_json := invalid_json(exc)) is not None:
        error = ErrorResponse(detail=not_json, code="invalid_json", field=None)
        return JSONResponse(error.model_dump(mode="json"), status_code=400)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    field = ".".join(str(p) for p in errors[0]["loc"]) if errors and errors[0]["loc"] else None
    error = ErrorResponse(detail=errors, code="invalid_request", field=field)
    return JSONResponse(error.model_dump(mode="json"), status_code=422)


def allowed_methods(request: Request) -> list[str]:
    """Every method the app's OpenAPI document gives this request's path (for the `Allow` header of a 405)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, request.url.path):
            methods |= {m.upper() for m in operations if m.isalpha()}
    return sorted(methods) or ["GET"]


async def http_error_response(request: Request, exc: Exception) -> Response:
    """Starlette's HTTP errors as `{"detail"}`; a 405 lists in `Allow` every method the path serves (not only those
    of the first route that matched it)."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    if request.url.path.startswith("/v1/"):  # OpenAI's error body under /v1/ (an unparsable body, before the route)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        body = {"error": {"message": str(exc.detail), "type": kind, "code": None, "param": None}}
        return JSONResponse(body, status_code=exc.status_code, headers=headers or None)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers or None)


async def contract_error_response(request: Request, exc: Exception) -> JSONResponse:
    """A request the route's model let through but the bus contract refuses (a stricter pattern, a bound): 422
    naming the field, never a 500."""
    assert isinstance(exc, ValidationError)
    errors = exc.errors()
    field = ".".join(str(p) for p in errors[0]["loc"]) or None if errors else None
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
    return JSONResponse(ErrorResponse(detail=detail, code="invalid_request", field=field).model_dump(mode="json"),
                        status_code=422)  # fmt: skip
