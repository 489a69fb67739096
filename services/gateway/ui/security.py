"""Sign-in, CSRF and the security headers of the web UI.

- The token lives in an `HttpOnly`, `SameSite=Strict` cookie scoped to `/ui` (`Secure` over HTTPS); page scripts
  never see it. It is checked on every request by the gateway's own bearer auth (services/gateway/auth.py).
- CSRF: a double-submit token. A random value in a second `HttpOnly`, `SameSite=Strict` cookie is also written into
  each page (a hidden form field, a `<meta>` the scripts send back as `X-CSRF-Token`); a state-changing request
  whose field or header does not equal the cookie is refused with 403, and so is one whose `Origin` is another site.
- Every answer carries a strict Content-Security-Policy (scripts from this origin only, no inline script or style).
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from fastapi import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from contracts.catalog import Caller
from services.gateway import auth

SESSION_COOKIE = "modelfleet_session"
CSRF_COOKIE = "modelfleet_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
COOKIE_PATH = "/ui"
#: How long the browser keeps the sign-in (the token's own expiry, if any, still applies at every request).
SESSION_MAX_AGE_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def secure_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def session_token(request: Request) -> str | None:
    token = request.cookies.get(SESSION_COOKIE, "").strip()
    return token or None


async def check_token(request: Request, token: str) -> Caller:
    """The caller `token` belongs to, by the REST API's own dependency (admin token or the catalog's check):
    raises its 401 (or 503 when the catalog cannot be asked)."""
    scope = dict(request.scope)
    scope["headers"] = [
        *[(k, v) for k, v in request.scope["headers"] if k.lower() != b"authorization"],
        (b"authorization", f"Bearer {token}".encode()),
    ]
    return await auth.caller(Request(scope))


def csrf_value(request: Request) -> str:
    """The CSRF token of this browser (a new one when it has none; `ensure_csrf_cookie` then sets it)."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if len(current) >= 32:
        return current
    fresh: str | None = getattr(request.state, "new_csrf", None)
    if fresh is None:
        fresh = secrets.token_urlsafe(32)
        request.state.new_csrf = fresh
    return fresh


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "") == "https"


def ensure_csrf_cookie(request: Request, response: Response) -> None:
    fresh = getattr(request.state, "new_csrf", None)
    if fresh is not None and request.cookies.get(CSRF_COOKIE) != fresh:
        response.set_cookie(
            CSRF_COOKIE, fresh, path=COOKIE_PATH, httponly=True, samesite="strict", secure=_secure(request)
        )


def set_session(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE, token, max_age=SESSION_MAX_AGE_S, path=COOKIE_PATH, httponly=True, samesite="strict",
        secure=_secure(request),
    )  # fmt: skip


def clear_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")


def check_origin(request: Request) -> None:
    """A state-changing request from a page of another origin is refused (browsers send `Origin` on POST)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return
    host = request.headers.get("host", "")
    if urlsplit(origin).netloc != host:
        raise HTTPException(403, f"cross-origin request refused (Origin {origin!r} is not this gateway)")


def check_csrf(request: Request, submitted: str | None) -> None:
    """403 unless `submitted` (the form field or the X-CSRF-Token header) equals this browser's CSRF cookie."""
    check_origin(request)
    expected = request.cookies.get(CSRF_COOKIE, "")
    given = submitted if submitted is not None else request.headers.get(CSRF_HEADER, "")
    if not expected or not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")
