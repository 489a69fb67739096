"""The gateway's error body: a failed bus hop (`RpcError`) as HTTP, with its status, code and field intact."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

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
        401: "No valid bearer token (with `WWW-Authenticate: Bearer`); `detail` says unknown, revoked or expired",
        403: "The token may not do this",
        404: "Not found; `field` names the part of the request",
        409: "Conflicts with the current state",
        422: "Invalid request; `field` names the first field at fault",
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
