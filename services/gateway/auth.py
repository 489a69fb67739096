"""Bearer authentication: the admin token (MODELFLEET_ADMIN_TOKEN, compared in constant time) or a user token
that the catalog issued, checked over `rpc.catalog.auth.v1`. 401 without a valid token, 403 for admin-only routes."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import Depends, HTTPException, Request
from pydantic import ValidationError

from contracts.catalog import AuthRequest, Caller
from contracts.rpc import RpcError
from services.gateway.bus_client import bus_of
from services.runtime.bus import BusState

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


class TokenCache:
    """The user tokens the catalog accepted lately, so that a caller's every request does not cost a catalog ask
    (a bus round trip and a PostgreSQL lookup). An answer is reused for `ttl_s` at most, never past the token's
    expiry, and only while the NATS connection has not dropped since it was given (a drop may have hidden a
    revocation's news); `clear()` runs on every catalog change (a revocation publishes one) and on this gateway's own
    revocations. Refusals are never kept. Keys are the tokens' SHA-256 digests; at `max_entries` it starts over."""

    def __init__(
        self, ttl_s: float, bus: BusState, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.bus = bus
        self.max_entries = max_entries
        self.clock = clock
        self._held: dict[bytes, tuple[Caller, float, int]] = {}

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> Caller | None:
        key = self._key(token)
        held = self._held.get(key)
        if held is None:
            return None
        who, until, drops = held
        if self.clock() >= until or drops != self.bus.drops:
            del self._held[key]
            return None
        return who

    def put(self, token: str, who: Caller, expires_at: datetime | None) -> None:
        if self.ttl_s <= 0:
            return
        ttl_s = self.ttl_s
        if expires_at is not None:
            ttl_s = min(ttl_s, (expires_at - datetime.now(UTC)).total_seconds())
        if ttl_s <= 0:
            return
        if len(self._held) >= self.max_entries:
            self._held.clear()
        self._held[self._key(token)] = (who, self.clock() + ttl_s, self.bus.drops)

    def clear(self) -> None:
        self._held.clear()

    def __len__(self) -> int:
        return len(self._held)


def token_cache_of(request: Request) -> TokenCache:
    cache: TokenCache = request.app.state.token_cache
    return cache


async def caller(request: Request) -> Caller:
    """The authenticated caller of this request (FastAPI dependency)."""
    token = bearer_token(request)
    if is_admin_token(request, token):
        return Caller(user_id=ADMIN_USER, admin=True)
    cache = token_cache_of(request)
    if (known := cache.get(token)) is not None:
        return known
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
    who = Caller(user_id=reply.user_id, admin=reply.admin)
    cache.put(token, who, reply.expires_at)
    return who


async def admin(who: Caller = Depends(caller)) -> Caller:
    """Admin-only routes (FastAPI dependency)."""
    if not who.admin:
        raise HTTPException(403, "this endpoint needs the admin token")
    return who
