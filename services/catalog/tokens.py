"""Pure rules of user tokens: when one expires, what state it is in, what a caller may see and do with it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from contracts.catalog import TokenDoc, TokenStatus
from services.catalog.domain import CatalogError


@dataclass(frozen=True)
class TokenRecord:
    """A stored token as the rules see it (the digest never leaves the store)."""

    token_id: uuid.UUID
    user_id: str
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


def expiry(now: datetime, expires_in_s: int | None, expires_at: datetime | None) -> datetime | None:
    """The expiry a new token gets; one already past is refused (it would be born dead)."""
    if expires_in_s is not None:
        return now + timedelta(seconds=expires_in_s)
    if expires_at is not None and expires_at <= now:
        raise CatalogError(422, f"expires_at: {expires_at.isoformat()} is not in the future", field="expires_at")
    return expires_at.astimezone(UTC) if expires_at is not None else None


def status(token: TokenRecord, now: datetime) -> TokenStatus:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active"


def check_usable(token: TokenRecord | None, now: datetime) -> TokenRecord:
    """401 naming why: the holder of the secret may learn that it was revoked or expired, nothing more."""
    if token is None:
        raise CatalogError(401, "unknown token")
    state = status(token, now)
    if state == "revoked":
        raise CatalogError(401, "token revoked")
    if state == "expired":
        assert token.expires_at is not None
        raise CatalogError(401, f"token expired at {token.expires_at.isoformat()}")
    return token


def needs_touch(token: TokenRecord, now: datetime, interval_s: float) -> bool:
    """last_used_at is written at most once per interval, so authentication stays (nearly) read-only."""
    return token.last_used_at is None or (now - token.last_used_at).total_seconds() >= interval_s


def doc(token: TokenRecord, now: datetime) -> TokenDoc:
    return TokenDoc(
        token_id=token.token_id, user_id=token.user_id, created_at=token.created_at, expires_at=token.expires_at,
        last_used_at=token.last_used_at, revoked_at=token.revoked_at, status=status(token, now),
    )  # fmt: skip


def owned(token: TokenRecord | None, user_id: str, token_id: uuid.UUID) -> TokenRecord:
    """A token id under another user's path is as unknown as one that does not exist (no existence leak)."""
    if token is None or token.user_id != user_id:
        raise CatalogError(404, f"token_id: user {user_id!r} has no token {token_id}", field="token_id")
    return token
