"""The web UI's pages under /ui/: sign-in, Library, Hosts, Provisioning, Inventory, Chat (docs/web-ui.md).

Every page reads the REST API in-process with the signed-in token (`api.call`); the pages' scripts reach the same
API through `/ui/api/...` (= `/api/v1/...`) and `/ui/v1/...` (= `/v1/...`), which add the token from the cookie and
check the CSRF header on anything that changes state."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from contracts.catalog import PROFILE_TYPES, Caller, CatalogModelsReply
from contracts.fit import HostCapacity, capacity
from contracts.hardware import GpuSampled
from contracts.rpc import RpcError
from contracts.vram import EstimateSettings
from services.gateway.ui import api, library, security

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["bytes"] = library.human_bytes
templates.env.filters["count"] = library.human_count
router = APIRouter(prefix="/ui", include_in_schema=False)

#: Contexts offered on the Library page (any other positive value can be typed in the URL).
CONTEXTS = (2048, 4096, 8192, 16384, 32768, 65536, 131072)
DEFAULT_CONTEXT = 8192
PAGES = (("library", "Library"), ("import", "Import"), ("hosts", "Hosts"), ("provision", "Provisioning"),
         ("inventory", "Inventory"), ("roles", "Roles"), ("chat", "Chat"))  # fmt: skip


@dataclass
class Session:
    token: str
    caller: Caller


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    ctx = {"csrf": security.csrf_value(request), "pages": PAGES, "user": None, **context}
    response = templates.TemplateResponse(request, name, ctx, status_code=status)
    security.ensure_csrf_cookie(request, response)
    return security.secure_headers(response)


def _to_login(request: Request, message: str | None = None) -> Response:
    query = {"next": request.url.path + (f"?{request.url.query}" if request.url.query else "")}
    if message:
        query["msg"] = message
    response = RedirectResponse(f"/ui/login?{urlencode(query)}", status_code=303)
    if message:
        security.clear_session(response)
    return security.secure_headers(response)


async def session(request: Request) -> Session | Response:
    """The signed-in session, or the answer to give instead (to the sign-in page; an error page when the token
    cannot be checked)."""
    token = security.session_token(request)
    if token is None:
        return _to_login(request)
    try:
        who = await security.check_token(request, token)
    except HTTPException as exc:
        if exc.status_code == 401:
            return _to_login(request, f"Signed out: {exc.detail}")
        raise
    except RpcError as exc:
        if exc.status == 401:
            return _to_login(request, f"Signed out: {exc.detail}")
        return render(request, "error.html", {"status": exc.status, "detail": exc.detail}, status=exc.status)
    return Session(token, who)


class PageAnswer(Exception):
    """What a page answers instead of itself (the sign-in page, an error page); the app turns it into the response."""

    def __init__(self, response: Response) -> None:
        self.response = response


async def page_answer(request: Request, exc: Exception) -> Response:
    """The app's handler for `PageAnswer` (registered in services/gateway/app.py)."""
    assert isinstance(exc, PageAnswer)
    return exc.response


async def signed_in(request: Request) -> Session:
    """The signed-in session, for a page; raises `PageAnswer` with what to answer when there is none."""
    s = await session(request)
    if not isinstance(s, Session):
        raise PageAnswer(s)
    return s


def _safe_next(value: str | None) -> str:
    """Only a path of this UI (no scheme, no other host): an open redirect is not offered."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/library"


async def form_fields(request: Request) -> dict[str, list[str]]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, f"a form is sent as application/x-www-form-urlencoded, not {kind or 'nothing'}")
    raw = await request.body()
    if len(raw) > 64 * 1024:
        raise HTTPException(413, "form over 64 KiB")
    return parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)


def first(fields: dict[str, list[str]], name: str) -> str:
    return (fields.get(name) or [""])[0].strip()


async def checked_form(request: Request) -> dict[str, list[str]]:
    fields = await form_fields(request)
    security.check_csrf(request, first(fields, security.CSRF_FIELD))
    return fields


def back(path: str, *, msg: str | None = None, err: str | None = None) -> Response:
    query = urlencode({k: v for k, v in (("msg", msg), ("err", err)) if v})
    return security.secure_headers(RedirectResponse(f"{path}?{query}" if query else path, status_code=303))


# --- sign-in ---------------------------------------------------------------------------------------------------------


@router.get("")
@router.get("/")
async def home() -> Response:
    return security.secure_headers(RedirectResponse("/ui/library", status_code=303))


@router.get("/login")
async def login_page(request: Request) -> Response:
    nxt = _safe_next(request.query_params.get("next"))
    return render(request, "login.html", {"next": nxt, "msg": request.query_params.get("msg"), "error": None})


@router.post("/login")
async def login(request: Request) -> Response:
    fields = await checked_form(request)
    token, nxt = first(fields, "token"), _safe_next(first(fields, "next"))
    if not token:
        return render(request, "login.html", {"next": nxt, "error": "token: enter your token"}, status=422)
    try:
        await security.check_token(request, token)
    except HTTPException as exc:
        return render(request, "login.html", {"next": nxt, "error": f"Not signed in: {exc.detail}"}, exc.status_code)
    except RpcError as exc:
        return render(request, "login.html", {"next": nxt, "error": f"Not signed in: {exc.detail}"}, exc.status)
    response = RedirectResponse(nxt, status_code=303)
    security.set_session(request, response, token)
    return security.secure_headers(response)


@router.post("/logout")
async def logout(request: Request) -> Response:
    await checked_form(request)
    response = RedirectResponse("/ui/login", status_code=303)
    security.clear_session(response)
    return security.secure_headers(response)


# --- library ---------------------------------------------------------------------------------------------------------


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> tuple[int, str | None]:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return default, None
    try:
        value = int(raw)
    except ValueError:
        return default, f"{name}: {raw!r} is not a whole number"
    if not low <= value <= high:
        return default, f"{name}: {value} is outside {low}..{high}"
    return value, None


def _samples(answer: api.ApiAnswer) -> list[GpuSampled]:
    out = []
    for h in (answer.json() or {}).get("hosts", []) if answer.ok else []:
        try:
            out.append(GpuSampled.model_validate(h["sample"]))
        except (ValidationError, KeyError):
            continue
    return out


@router.get("/library")
async def library_page(request: Request) -> Response:
    s = await signed_in(request)
    q = request.query_params
    errors = []
    num_ctx, err = _int_param(request, "num_ctx", DEFAULT_CONTEXT, 256, 10_000_000)
    if err:
        errors.append(err)
    capability, host = q.get("capability", "").strip(), q.get("host", "").strip()
    max_size = q.get("max_size_gb", "").strip()
    params: dict[str, Any] = {}
    if max_size:
        try:
            if float(max_size) < 0:
                raise ValueError
            params["max_size_gb"] = max_size
        except ValueError:
            errors.append(f"max_size_gb: {max_size!r} is not a size in GB")
    everything = await api.call(request, "GET", "/api/v1/catalog/models", s.token)
    listed = await api.call(
        request, "GET", "/api/v1/catalog/models", s.token, params={**params, "capability": capability or None}
    )
    hosts_answer = await api.call(request, "GET", "/api/v1/hosts", s.token)
    if not listed.ok:
        errors.append(f"library: {listed.detail}")
    if not hosts_answer.ok:
        errors.append(f"hosts: {hosts_answer.detail}")
    caps = sorted(
        {c for m in CatalogModelsReply.model_validate(everything.json() or {}).models for c in m.capabilities}
    )
    models = CatalogModelsReply.model_validate(listed.json()).models if listed.ok else []
    samples = _samples(hosts_answer)
    capacities: list[HostCapacity] = [capacity(x) for x in samples]
    host_ids = [c.host_id for c in capacities]
    if host and host not in host_ids:
        errors.append(f"host: {host!r} has not reported (hosts: {', '.join(host_ids) or 'none'})")
        host = ""
    shown = [c for c in capacities if not host or c.host_id == host]
    rows = library.rows(models, shown, EstimateSettings(num_ctx=num_ctx))
    if host:
        rows = [r for r in rows if r.runs_on(host)]
    ctx = {
        "page": "library", "user": s.caller, "rows": rows, "hosts": host_ids, "shown_hosts": [c.host_id for c in shown],
        "capabilities": caps, "contexts": sorted({*CONTEXTS, num_ctx}), "f": {"capability": capability,
        "max_size_gb": max_size, "host": host, "num_ctx": num_ctx}, "errors": errors, "total": len(models),
    }  # fmt: skip
    if request.headers.get("hx-request") == "true":
        return render(request, "library_results.html", ctx)
    return render(request, "library.html", ctx)


# --- hosts -----------------------------------------------------------------------------------------------------------


@router.get("/hosts")
async def hosts_page(request: Request) -> Response:
    s = await signed_in(request)
    answer = await api.call(request, "GET", "/api/v1/hosts", s.token)
    errors = [] if answer.ok else [f"hosts: {answer.detail}"]
    hosts = []
    for h in (answer.json() or {}).get("hosts", []) if answer.ok else []:
        rec = await api.call(request, "GET", f"/api/v1/hosts/{quote(h['host_id'], safe='')}/recommendations", s.token)
        hosts.append(
            {**h, "recommendation": rec.json() if rec.ok else None, "rec_error": None if rec.ok else rec.detail}
        )
    return render(request, "hosts.html", {"page": "hosts", "user": s.caller, "hosts": hosts, "errors": errors})


# --- provisioning ----------------------------------------------------------------------------------------------------


def _names(fields: dict[str, list[str]], name: str) -> list[str]:
    out: list[str] = []
    for value in fields.get(name, []):
        out += [v.strip() for v in value.replace(",", "\n").splitlines() if v.strip()]
    return out


async def _roles(request: Request, s: Session) -> list[str]:
    """The roles of the active set: the ids /v1/models lists before the library's models."""
    listed = await api.call(request, "GET", "/v1/models", s.token)
    catalog = await api.call(request, "GET", "/api/v1/catalog/models", s.token)
    if not listed.ok:
        return []
    models = {m["id"] for m in (catalog.json() or {}).get("models", [])} if catalog.ok else set()
    return [m["id"] for m in listed.json().get("data", []) if m["id"] not in models]


@router.get("/provision")
async def provision_page(request: Request) -> Response:
    s = await signed_in(request)
    hosts = await api.call(request, "GET", "/api/v1/hosts", s.token)
    audit, audit_error = await _audit(request, s, {"limit": AUDIT_ROWS})
    ctx = {
        "page": "provision", "user": s.caller, "roles": await _roles(request, s),
        "hosts": [x.host_id for x in _samples(hosts)], "msg": request.query_params.get("msg"),
        "errors": [e for e in [request.query_params.get("err")] if e], "audit": audit, "audit_error": audit_error,
        "audit_limit": AUDIT_ROWS,
    }  # fmt: skip
    return render(request, "provision.html", ctx)


#: How many audit rows the Provisioning page shows.
AUDIT_ROWS = 50


async def _audit(request: Request, s: Session, params: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """The audit rows `params` select, or none and why (a signed-in user who is not an admin may not read them)."""
    if not s.caller.admin:
        return [], "the audit trail is for admins"
    answer = await api.call(request, "GET", "/api/v1/provision/audit", s.token, params=params)
    if not answer.ok:
        return [], f"audit trail unavailable ({answer.status}): {answer.detail}"
    return list((answer.json() or {}).get("entries", [])), None


@router.post("/provision")
async def provision_start(request: Request) -> Response:
    s = await signed_in(request)
    fields = await checked_form(request)
    body = {
        "roles": _names(fields, "roles"), "models": _names(fields, "models"), "hosts": _names(fields, "hosts"),
        "force": first(fields, "force") == "on", "allow_unpinned": first(fields, "allow_unpinned") == "on",
    }  # fmt: skip
    if not body["roles"] and not body["models"] and first(fields, "all_roles") != "on":
        return back("/ui/provision", err="pick at least one role or model (or tick 'every role of the active set')")
    answer = await api.call(request, "POST", "/api/v1/models/provision", s.token, json_body=body)
    if answer.status != 202:
        return back("/ui/provision", err=f"provision refused ({answer.status}): {answer.detail}")
    accepted = answer.json()
    since = accepted["progress_url"].partition("since=")[2]
    target = f"/ui/provision/{accepted['request_id']}?{urlencode({'since': since})}"
    return security.secure_headers(RedirectResponse(target, status_code=303))


@router.get("/provision/{request_id}")
async def provision_request_page(request: Request, request_id: uuid.UUID) -> Response:
    s = await signed_in(request)
    result = await api.call(request, "GET", f"/api/v1/models/provision/{request_id}", s.token)
    audit, audit_error = await _audit(request, s, {"request_id": str(request_id), "limit": AUDIT_ROWS})
    since = request.query_params.get("since", "")
    if not since:
        since = (datetime.now(UTC) - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ctx = {
        "page": "provision", "user": s.caller, "request_id": str(request_id), "since": since,
        "result": result.json() if result.ok else None, "errors": [] if result.ok else [result.detail],
        "audit": audit, "audit_error": audit_error, "admin": s.caller.admin,
    }  # fmt: skip
    return render(request, "provision_request.html", ctx)


# --- inventory -------------------------------------------------------------------------------------------------------


@router.get("/inventory")
async def inventory_page(request: Request) -> Response:
    s = await signed_in(request)
    answer = await api.call(request, "GET", "/api/v1/inventory", s.token)
    errors = [e for e in [request.query_params.get("err")] if e]
    if not answer.ok:
        errors.append(f"inventory: {answer.detail}")
    entries = sorted((answer.json() or {}).get("entries", []) if answer.ok else [],
                     key=lambda e: (e["host"], e["model_id"]))  # fmt: skip
    updates = await api.call(request, "GET", "/api/v1/updates", s.token)
    ctx = {"page": "inventory", "user": s.caller, "entries": entries, "errors": errors,
           "msg": request.query_params.get("msg"), "updates": updates.json() if updates.ok else None,
           "updates_error": None if updates.ok else updates.detail}  # fmt: skip
    return render(request, "inventory.html", ctx)


@router.post("/inventory/updates")
async def inventory_updates(request: Request) -> Response:
    s = await signed_in(request)
    await checked_form(request)
    answer = await api.call(request, "POST", "/api/v1/updates/check", s.token)
    if not answer.ok:
        return back("/ui/inventory", err=f"update check ({answer.status}): {answer.detail}")
    done = answer.json()
    msg = f"update check: {done['checked']} checked, {len(done['found'])} updates found"
    if done["errors"] or done["not_checked"]:
        msg += f", {len(done['errors'])} errors, {len(done['not_checked'])} not checked"
    return back("/ui/inventory", msg=msg)


@router.post("/inventory/delete")
async def inventory_delete(request: Request) -> Response:
    s = await signed_in(request)
    fields = await checked_form(request)
    host, model = first(fields, "host"), first(fields, "model")
    if not host or not model:
        return back("/ui/inventory", err="delete: host and model are both needed")
    path = f"/api/v1/inventory/{quote(host, safe='')}/{quote(model, safe=':@/')}"
    params = {"inventory_only": "true"} if first(fields, "inventory_only") == "on" else None
    answer = await api.call(request, "DELETE", path, s.token, params=params)
    if not answer.ok:
        return back("/ui/inventory", err=f"delete {model} on {host} ({answer.status}): {answer.detail}")
    done = answer.json()
    where = "from the host and the inventory" if done["removed_from_host"] else "from the inventory only"
    return back("/ui/inventory", msg=f"deleted {model} on {host} {where}")


@router.post("/inventory/default")
async def inventory_default(request: Request) -> Response:
    s = await signed_in(request)
    fields = await checked_form(request)
    model = first(fields, "model")
    answer = await api.call(request, "POST", "/api/v1/models/default", s.token, json_body={"model": model})
    if not answer.ok:
        return back("/ui/inventory", err=f"set default {model!r} ({answer.status}): {answer.detail}")
    return back("/ui/inventory", msg=f"default model is now {answer.json()['default_model']}")


@router.post("/inventory/sync")
async def inventory_sync(request: Request) -> Response:
    s = await signed_in(request)
    await checked_form(request)
    answer = await api.call(request, "POST", "/api/v1/inventory/sync", s.token)
    if not answer.ok:
        return back("/ui/inventory", err=f"sync ({answer.status}): {answer.detail}")
    done = answer.json()
    msg = f"sync: {len(done['adopted'])} adopted on {', '.join(done['hosts']) or 'no host'}"
    if done["errors"]:
        msg += f"; errors: {'; '.join(done['errors'])}"
    return back("/ui/inventory", msg=msg)


# --- chat ------------------------------------------------------------------------------------------------------------


@router.get("/chat")
async def chat_page(request: Request) -> Response:
    s = await signed_in(request)
    return render(request, "chat.html", {"page": "chat", "user": s.caller, "roles": await _roles(request, s)})


# --- the REST API for the pages' scripts -----------------------------------------------------------------------------

#: Answer headers passed back to the page's script.
PASSED_ANSWER_HEADERS = {"content-type", "content-disposition", "cache-control", "retry-after",
                         "x-modelfleet-backend", "x-modelfleet-route-reason", "x-modelfleet-overhead-ms"}  # fmt: skip


async def _proxy(request: Request, target: str) -> Response:
    token = security.session_token(request)
    if token is None:
        return security.secure_headers(Response('{"detail": "not signed in"}', 401, media_type="application/json"))
    if request.method not in security.SAFE_METHODS:
        security.check_csrf(request, None)
    body = await request.body()
    streamed = await api.forward(
        request, request.method, target, token, query=request.url.query, body=body, headers=request.scope["headers"]
    )
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in streamed.headers
               if k.decode("latin-1").lower() in PASSED_ANSWER_HEADERS}  # fmt: skip
    response = StreamingResponse(streamed.body, status_code=streamed.status, headers=headers)
    return security.secure_headers(response)


@router.api_route("/api/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def api_proxy(request: Request, path: str) -> Response:
    """`/ui/api/X` is `/api/v1/X` with the cookie's token (and, for a change, the CSRF header checked)."""
    return await _proxy(request, f"/api/v1/{path}")


@router.api_route("/v1/{path:path}", methods=["GET", "POST"])
async def openai_proxy(request: Request, path: str) -> Response:
    """`/ui/v1/X` is the OpenAI-compatible `/v1/X`, the same way."""
    return await _proxy(request, f"/v1/{path}")


# --- import from Hugging Face ----------------------------------------------------------------------------------------

#: The provisioner's fit classes as the Library's badges.
HF_FIT = {"perfect": "fits", "tight": "tight", "wont_fit": "wont", "no_gpu": "nogpu"}


def _hf_badge(host: str, fit: str) -> dict[str, str]:
    """A badge from the provisioner's fit class (`no_gpu`: the host has no GPU to judge by)."""
    if fit == "no_gpu":
        return {"host": host, "kind": "nogpu", "css": "fit-offload", "words": "no GPU"}
    kind = HF_FIT.get(fit, "wont")
    css, words = library.BADGES[kind]
    return {"host": host, "kind": kind, "css": css, "words": words}


@router.get("/import")
async def import_page(request: Request) -> Response:
    s = await signed_in(request)
    q = request.query_params
    repo, revision = q.get("repo", "").strip(), (q.get("revision", "").strip() or "main")
    num_ctx, err = _int_param(request, "num_ctx", DEFAULT_CONTEXT, 0, 10_000_000)
    errors = [e for e in [err, q.get("err")] if e]
    found = None
    if repo:
        params = {"repo": repo, "revision": revision, "context_tokens": num_ctx}
        answer = await api.call(request, "GET", "/api/v1/hf/quantizations", s.token, params=params)
        if answer.ok:
            found = answer.json()
            for quant in found["quantizations"]:
                quant["badges"] = [_hf_badge(h, v) for h, v in sorted(quant["fit"].items())]
        else:
            errors.append(f"{repo}@{revision} ({answer.status}): {answer.detail}")
    hosts = await api.call(request, "GET", "/api/v1/hosts", s.token)
    ctx = {
        "page": "import", "user": s.caller, "repo": repo, "revision": revision, "num_ctx": num_ctx, "found": found,
        "hosts": [x.host_id for x in _samples(hosts)], "errors": errors,
    }  # fmt: skip
    return render(request, "import.html", ctx)


@router.post("/import")
async def import_start(request: Request) -> Response:
    s = await signed_in(request)
    fields = await checked_form(request)
    repo, quant, host = first(fields, "repo"), first(fields, "quant"), first(fields, "host")
    commit, branch = first(fields, "commit"), first(fields, "revision")
    unpinned = first(fields, "unpinned") == "on"
    if not quant:
        return back("/ui/import", err="pick a quantization")
    revision = branch if unpinned else commit  # pinned: the commit the revision resolved to when listed
    body = {"repo": repo, "quant": quant, "revision": revision, "host": host or None, "allow_unpinned": unpinned,
            "wait": False}  # fmt: skip
    answer = await api.call(request, "POST", "/api/v1/models/import", s.token, json_body=body)
    if answer.status != 202:
        why = f"import refused ({answer.status}): {answer.detail}"
        query = urlencode({"repo": repo, "revision": branch, "err": why})
        return security.secure_headers(RedirectResponse(f"/ui/import?{query}", status_code=303))
    accepted = answer.json()
    since = accepted["progress_url"].partition("since=")[2]
    target = f"/ui/provision/{accepted['request_id']}?{urlencode({'since': since})}"
    return security.secure_headers(RedirectResponse(target, status_code=303))


# --- roles and profiles ----------------------------------------------------------------------------------------------


@router.get("/roles")
async def roles_page(request: Request) -> Response:
    s = await signed_in(request)
    errors = [e for e in [request.query_params.get("err")] if e]
    overview = None
    if s.caller.admin:
        answer = await api.call(request, "GET", "/api/v1/models", s.token)
        if answer.ok:
            overview = answer.json()
        else:
            errors.append(f"profile sets: {answer.detail}")
    profiles = await api.call(request, "GET", "/api/v1/profiles", s.token)
    if not profiles.ok:
        errors.append(f"profiles: {profiles.detail}")
    user = quote(s.caller.user_id, safe="")
    config = await api.call(request, "GET", f"/api/v1/users/{user}/profile-config", s.token)
    ctx = {
        "page": "roles", "user": s.caller, "overview": overview, "roles": await _roles(request, s),
        "profiles": (profiles.json() or {}).get("profiles", []) if profiles.ok else [],
        "config": config.json() if config.ok else None, "config_error": None if config.ok else config.detail,
        "msg": request.query_params.get("msg"), "errors": errors, "types": list(PROFILE_TYPES.values()),
    }  # fmt: skip
    return render(request, "roles.html", ctx)


@router.post("/roles/overrides")
async def roles_overrides(request: Request) -> Response:
    s = await signed_in(request)
    fields = await checked_form(request)
    overrides = _json_object(first(fields, "overrides"), "overrides")
    if isinstance(overrides, str):
        return back("/ui/roles", err=overrides)
    user = quote(s.caller.user_id, safe="")
    body = {"overrides": overrides}
    answer = await api.call(request, "PUT", f"/api/v1/users/{user}/profile-config", s.token, json_body=body)
    if not answer.ok:
        return back("/ui/roles", err=f"overrides ({answer.status}): {answer.detail}")
    return back("/ui/roles", msg=f"overrides of {s.caller.user_id} saved")


def _json_object(raw: str, what: str) -> dict[str, Any] | str:
    """The JSON object in `raw` (empty: {}), or the error naming `what`."""
    try:
        value = json.loads(raw or "{}")
    except ValueError as exc:
        return f"{what}: not JSON ({exc})"
    if not isinstance(value, dict):
        return f"{what}: a JSON object is needed, not {type(value).__name__}"
    return value


@router.post("/roles/profiles")
async def profile_create(request: Request) -> Response:
    s = await signed_in(request)
    fields = await checked_form(request)
    parameters = _json_object(first(fields, "parameters"), "parameters")
    if isinstance(parameters, str):
        return back("/ui/roles", err=parameters)
    body = {
        "name": first(fields, "name"), "type": first(fields, "type"), "model_name": first(fields, "model_name"),
        "parameters": parameters, "system_prompt": first(fields, "system_prompt"),
        "description": first(fields, "description"),
    }  # fmt: skip
    answer = await api.call(request, "POST", "/api/v1/profiles", s.token, json_body=body)
    if not answer.ok:
        return back("/ui/roles", err=f"profile {body['name']!r} ({answer.status}): {answer.detail}")
    made = answer.json()
    return back("/ui/roles", msg=f"profile {made['name']} created ({made['type_name']}, {made['model_name']})")


@router.post("/roles/profiles/edit")
async def profile_edit(request: Request) -> Response:
    """Save the edit form of one profile: `PUT /api/v1/profiles/{id}` with every field the form shows (the API's
    owner/admin rules and the checks of a create apply)."""
    s = await signed_in(request)
    fields = await checked_form(request)
    try:
        profile_id = uuid.UUID(first(fields, "profile_id"))
    except ValueError:
        return back("/ui/roles", err="edit: profile_id is not a UUID")
    parameters = _json_object(first(fields, "parameters"), "parameters")
    if isinstance(parameters, str):
        return back("/ui/roles", err=f"edit: {parameters}")
    body = {
        "name": first(fields, "name"), "type": first(fields, "type"), "model_name": first(fields, "model_name"),
        "parameters": parameters, "system_prompt": first(fields, "system_prompt"),
        "description": first(fields, "description"),
    }  # fmt: skip
    answer = await api.call(request, "PUT", f"/api/v1/profiles/{profile_id}", s.token, json_body=body)
    if not answer.ok:
        return back("/ui/roles", err=f"edit profile {body['name']!r} ({answer.status}): {answer.detail}")
    saved = answer.json()
    return back("/ui/roles", msg=f"profile {saved['name']} saved ({saved['type_name']}, {saved['model_name']})")


@router.post("/roles/profiles/delete")
async def profile_delete(request: Request) -> Response:
    s = await signed_in(request)
    fields = await checked_form(request)
    try:
        profile_id = uuid.UUID(first(fields, "profile_id"))
    except ValueError:
        return back("/ui/roles", err="delete: profile_id is not a UUID")
    answer = await api.call(request, "DELETE", f"/api/v1/profiles/{profile_id}", s.token)
    if not answer.ok:
        return back("/ui/roles", err=f"delete profile ({answer.status}): {answer.detail}")
    return back("/ui/roles", msg=f"profile {first(fields, 'name') or profile_id} deleted")


@router.post("/roles/use")
async def profile_use(request: Request) -> Response:
    """Use a profile for its type (`profile_id` empty: back to the system default for that type)."""
    s = await signed_in(request)
    fields = await checked_form(request)
    kind, raw = first(fields, "type"), first(fields, "profile_id")
    try:
        chosen = str(uuid.UUID(raw)) if raw else None
    except ValueError:
        return back("/ui/roles", err="use: profile_id is not a UUID")
    user = quote(s.caller.user_id, safe="")
    body = {"profiles": {kind: chosen}}
    answer = await api.call(request, "PUT", f"/api/v1/users/{user}/profile-config", s.token, json_body=body)
    if not answer.ok:
        return back("/ui/roles", err=f"use for {kind} ({answer.status}): {answer.detail}")
    now = f"profile {first(fields, 'name') or raw}" if chosen else "system default"
    return back("/ui/roles", msg=f"{kind}: {now}")
