"""Bearer authentication: the admin token (MODELFLEET_ADMIN_TOKEN, compared in constant time) or a user token
that the catalog issued, checked over `rpc.catalog.auth.v1`. 401 without a valid token, 403 for admin-only routes."""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request
from pydantic import ValidationError

from contracts.catalog import AuthRequest, Caller
from contracts.rpc import RpcError
from services.gateway.bus_client import bus_of

ADMIN_USER = "admin"
#: How long a route waits for the catalog to check a token.
AUTH_TIMEOUT_S = 5.0
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "Authorization: Bearer <token> required", headers=_CHALLENGE)
    return token.strip()


def is_admin_token(request: Request, token: str) -> bool:
    admin = request.app.state.settings.admin_token
    if admin is None:
        return False
    return hmac.compare_digest(token.encode(), admin.get_secret_value().encode())


async def caller(request: Request) -> Caller:
    """The authenticated caller of this request (FastAPI dependency)."""
    token = bearer_token(request)
    if is_admin_token(request, token):
        return Caller(user_id=ADMIN_USER, admin=True)
    try:
        check = AuthRequest(token=token)
    except ValidationError:  # longer than any token the catalog issues
        raise HTTPException(401, "unknown token", headers=_CHALLENGE) from None
    try:
        # A 401 passes through as the catalog worded it (unknown, revoked or expired: told only to the holder).
        reply = await bus_of(request).ask(check, timeout_s=AUTH_TIMEOUT_S)
    except RpcError as exc:
        if exc.status >= 500:
            raise RpcError(exc.status, f"cannot check the token: {exc.detail}", code=exc.code) from exc
        raise
    return Caller(user_id=reply.user_id, admin=reply.admin)


async def admin(who: Caller = Depends(caller)) -> Caller:
    """Admin-only routes (FastAPI dependency)."""
    if not who.admin:
        raise HTTPException(403, "this endpoint needs the admin token")
    return who
