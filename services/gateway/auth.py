"""Bearer authentication: the admin token (MODELFLEET_ADMIN_TOKEN, compared in constant time) or a user token
that the catalog issued, checked over `rpc.catalog.auth.v1`. 401 without a valid token, 403 for admin-only routes."""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request

from contracts.catalog import AuthReply, AuthRequest, Caller
from services.gateway.bus_client import BusClient, BusUnavailable, RemoteError

ADMIN_USER = "admin"
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
    bus: BusClient = request.app.state.bus
    try:
        reply = await bus.request(AuthRequest.SUBJECT, AuthRequest(token=token), AuthReply, timeout_s=5.0)
    except RemoteError as exc:
        if exc.status == 401:  # the catalog says which: unknown, revoked or expired (told only to the holder)
            detail = exc.detail if isinstance(exc.detail, str) else "invalid token"
            raise HTTPException(401, detail, headers=_CHALLENGE) from exc
        raise HTTPException(exc.status, exc.detail) from exc
    except BusUnavailable as exc:
        raise HTTPException(503, f"cannot check the token: {exc}") from exc
    return Caller(user_id=reply.user_id, admin=reply.admin)


async def admin(who: Caller = Depends(caller)) -> Caller:
    """Admin-only routes (FastAPI dependency)."""
    if not who.admin:
        raise HTTPException(403, "this endpoint needs the admin token")
    return who
