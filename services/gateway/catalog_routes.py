"""Gateway routes of the catalog: models overview, profiles CRUD, the library, user profile config, import/export."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, Field

from contracts.catalog import (
    MAX_INLINE_BYTES,
    MAX_TOKEN_LIFETIME_S,
    Caller,
    CatalogModelsReply,
    CatalogModelsRequest,
    ExportRequest,
    ImportReply,
    ImportRequest,
    ModelDoc,
    ModelInfoRequest,
    ModelPatchRequest,
    OverviewReply,
    OverviewRequest,
    ProfileDeleteReply,
    ProfileDeleteRequest,
    ProfileDoc,
    ProfileGetRequest,
    ProfileInput,
    ProfileListReply,
    ProfileListRequest,
    ProfileSaveRequest,
    ResolveReply,
    ResolveRequest,
    SetDefaultReply,
    SetDefaultRequest,
    TokenIssueReply,
    TokenIssueRequest,
    TokenListReply,
    TokenListRequest,
    TokenRevokeReply,
    TokenRevokeRequest,
    UserConfigGetRequest,
    UserConfigReply,
    UserConfigRequest,
)
from services.gateway import links
from services.gateway.auth import admin, caller, token_cache_of
from services.gateway.bus_client import bus_of
from services.gateway.errors import ERROR_RESPONSES
from services.runtime import staging

router = APIRouter(tags=["catalog"], responses=ERROR_RESPONSES)
#: The largest manifest an import takes (a guard against a runaway upload, far above any real manifest). A file over
#: `MAX_INLINE_BYTES` does not travel in the bus message (NATS refuses payloads over its max_payload, 1 MiB by
#: default): it is staged in a JetStream object store and the request names it (docs/catalog.md#size-limits).
MAX_IMPORT_BYTES = 256 * 1024 * 1024
PerformanceProfileQuery = Annotated[
    str | None,
    Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="A performance profile to apply.",
          examples=["code_gen"]),
]  # fmt: skip
#: The fields a library patch may name (any value here: the catalog validates them as an import does).
_PATCHABLE: dict[str, Any] = {n: {} for n in ModelDoc.model_fields if n not in ("id", "origin", "edited_fields")}
UserPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$", examples=["alice"])]
_MEDIA = {"json": "application/json", "toml": "application/toml", "models.txt": "text/plain; charset=utf-8"}


class DefaultModelBody(BaseModel):
    model: str = Field(min_length=1, max_length=256, examples=["qwen3:8b"])


class ProfileConfigBody(BaseModel):
    profiles: dict[str, uuid.UUID | None] = Field(default_factory=dict, examples=[{"primary": "…uuid…"}])
    overrides: dict[str, Any] | None = None


class TokenBody(BaseModel):
    display_name: str = Field(default="", max_length=256)
    expires_in_s: int | None = Field(
        default=None, gt=0, le=MAX_TOKEN_LIFETIME_S, description="Expire this many seconds after issue."
    )
    expires_at: AwareDatetime | None = Field(default=None, description="Expire at this instant (with a UTC offset).")


@router.get("/api/v1/models", response_model=OverviewReply)
async def models_overview(
    request: Request, user_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    who: Caller = Depends(admin),
) -> OverviewReply:  # fmt: skip
    """Admin: the active profile set with every role resolved (for `user_id`'s overrides if given), and all sets."""
    return await bus_of(request).ask(OverviewRequest(caller=who, user_id=user_id))


@router.post("/api/v1/models/default", response_model=SetDefaultReply)
async def set_default(request: Request, body: DefaultModelBody, who: Caller = Depends(admin)) -> SetDefaultReply:
    """Admin: set the default model (`model: "default"` and the last resort of every fallback chain)."""
    return await bus_of(request).ask(SetDefaultRequest(caller=who, model=body.model))


@router.get("/api/v1/profiles", response_model=ProfileListReply, responses={200: {"links": links.PROFILE_LIST_LINKS}})
async def list_profiles(
    request: Request,
    type: Annotated[str | None, Query(min_length=1, max_length=64, description="A profile type name or number")] = None,
    owner_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    who: Caller = Depends(caller),
) -> ProfileListReply:
    """System profiles and the caller's own (an admin sees all; `owner_id=system` for system ones only)."""
    return await bus_of(request).ask(ProfileListRequest(caller=who, type=type, owner_id=owner_id))


@router.get("/api/v1/profiles/{profile_id}", response_model=ProfileDoc, responses={200: {"links": links.PROFILE_LINKS}})
async def get_profile(request: Request, profile_id: uuid.UUID, who: Caller = Depends(caller)) -> ProfileDoc:
    return await bus_of(request).ask(ProfileGetRequest(caller=who, profile_id=profile_id))


@router.post(
    "/api/v1/profiles", response_model=ProfileDoc, status_code=201, responses={201: {"links": links.PROFILE_LINKS}}
)
async def create_profile(
    request: Request,
    body: Annotated[ProfileInput, Body(openapi_examples=links.PROFILE_EXAMPLES)],
    who: Caller = Depends(caller),
) -> ProfileDoc:
    """A user's profile is theirs; one an admin creates is a system profile."""
    return await bus_of(request).ask(ProfileSaveRequest(caller=who, profile=body))


@router.put("/api/v1/profiles/{profile_id}", response_model=ProfileDoc, responses={200: {"links": links.PROFILE_LINKS}})
async def update_profile(
    request: Request, profile_id: uuid.UUID, body: ProfileInput, who: Caller = Depends(caller)
) -> ProfileDoc:
    """Omitted fields keep their value; system profiles are read-only to users."""
    return await bus_of(request).ask(ProfileSaveRequest(caller=who, profile_id=profile_id, profile=body))


@router.delete("/api/v1/profiles/{profile_id}", response_model=ProfileDeleteReply)
async def delete_profile(request: Request, profile_id: uuid.UUID, who: Caller = Depends(caller)) -> ProfileDeleteReply:
    return await bus_of(request).ask(ProfileDeleteRequest(caller=who, profile_id=profile_id))


@router.get("/api/v1/catalog/models", response_model=CatalogModelsReply)
async def catalog_models(
    request: Request,
    capability: str | None = Query(None, min_length=1, max_length=64, examples=["embedding"]),
    category: str | None = Query(None, min_length=1, max_length=64, examples=["balanced"]),
    tag: str | None = Query(None, min_length=1, max_length=64),
    family: str | None = Query(None, min_length=1, max_length=64),
    max_size_gb: float | None = Query(
        None, ge=0, le=1e9, description="Smallest download at most this many GB (10^9 bytes)."
    ),
    max_size_bytes: int | None = Query(None, ge=0, le=2**63 - 1),
    who: Caller = Depends(caller),
) -> CatalogModelsReply:
    """The model library, filtered; every filter given must hold."""
    limit = (
        max_size_bytes if max_size_bytes is not None else (int(max_size_gb * 1e9) if max_size_gb is not None else None)
    )
    query = CatalogModelsRequest(capability=capability, category=category, tag=tag, family=family, max_size_bytes=limit)
    return await bus_of(request).ask(query)


@router.get("/api/v1/catalog/resolve", response_model=ResolveReply)
async def resolve(
    request: Request,
    role: Annotated[str | None, Query(min_length=1, max_length=256, examples=["coding"])] = None,
    model: Annotated[str | None, Query(min_length=1, max_length=256, examples=["qwen3:8b"])] = None,
    profile_id: uuid.UUID | None = None,
    performance_profile: PerformanceProfileQuery = None,
    user_id: Annotated[str | None, Query(min_length=1, max_length=256, description="Admin only: as this user.")] = None,
    who: Caller = Depends(caller),
) -> ResolveReply:
    """Exactly one of role, model, profile_id: the model, provider, merged parameters with the layer each came from
    (`parameter_sources`), system prompt and fallbacks. A user resolves as themself; the admin as `user_id` (or
    as no user)."""
    if not who.admin and user_id not in (None, who.user_id):
        raise HTTPException(403, f"user_id: {user_id!r} is another user (only the admin resolves for others)")
    as_user = user_id if who.admin else who.user_id
    given = [n for n, v in (("role", role), ("model", model), ("profile_id", profile_id)) if v is not None]
    if len(given) != 1:
        raise HTTPException(422, f"give exactly one of role, model, profile_id (got {', '.join(given) or 'none'})")
    req = ResolveRequest(
        role=role, model=model, profile_id=profile_id, user_id=as_user, performance_profile=performance_profile
    )
    return await bus_of(request).ask(req)


@router.get("/api/v1/catalog/models/{model:path}", response_model=ModelDoc)
async def catalog_model(request: Request, model: str, who: Caller = Depends(caller)) -> ModelDoc:
    """One model by id, Ollama name or Hugging Face repo."""
    return await bus_of(request).ask(ModelInfoRequest(model=model))


@router.patch(
    "/api/v1/catalog/models/{model:path}",
    response_model=ModelDoc,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "A JSON merge patch (RFC 7396) of ModelDoc fields other than id, origin, edited_fields.",
            "content": {
                m: {"schema": {"type": "object", "properties": _PATCHABLE, "additionalProperties": False}}
                for m in ("application/json", "application/merge-patch+json")
            },
        }
    },
)
async def patch_model(request: Request, model: str, who: Caller = Depends(admin)) -> ModelDoc:
    """Admin: change fields of any library model, validated as an import validates them (a 422 names the field; a
    refused patch changes nothing). Objects merge, `null` resets a field; changed fields are kept as local edits
    when the curated library is applied again."""
    try:
        changes = await request.json()
    except ValueError as exc:
        raise HTTPException(422, f"the body is not JSON: {exc}") from exc
    if not isinstance(changes, dict):
        raise HTTPException(422, f"the body must be a JSON object of model fields, got {type(changes).__name__}")
    return await bus_of(request).ask(ModelPatchRequest(caller=who, model=model, changes=changes))


@router.get("/api/v1/users/{user_id}/profile-config", response_model=UserConfigReply)
async def get_profile_config(request: Request, user_id: str, who: Caller = Depends(caller)) -> UserConfigReply:
    return await bus_of(request).ask(UserConfigGetRequest(caller=who, user_id=user_id))


@router.put("/api/v1/users/{user_id}/profile-config", response_model=UserConfigReply)
async def put_profile_config(
    request: Request, user_id: str, body: ProfileConfigBody, who: Caller = Depends(caller)
) -> UserConfigReply:
    """Map profile types to profile ids (null: back to the system default) and set parameter overrides."""
    req = UserConfigRequest(caller=who, user_id=user_id, profiles=body.profiles, overrides=body.overrides)
    return await bus_of(request).ask(req)


@router.post(
    "/api/v1/users/{user_id}/tokens",
    response_model=TokenIssueReply,
    status_code=201,
    responses={201: {"links": links.TOKEN_LINKS}},
)
async def issue_token(
    request: Request, user_id: UserPath, body: TokenBody, who: Caller = Depends(admin)
) -> TokenIssueReply:
    """Admin: mint a bearer token for `user_id` (the user is created on first issue). Shown once.

    At most one of `expires_in_s` / `expires_at`; neither: the token never expires."""
    if body.expires_in_s is not None and body.expires_at is not None:
        raise HTTPException(422, "give at most one of expires_in_s, expires_at")
    req = TokenIssueRequest(caller=who, user_id=user_id, **body.model_dump())
    return await bus_of(request).ask(req)


@router.get(
    "/api/v1/users/{user_id}/tokens", response_model=TokenListReply, responses={200: {"links": links.TOKEN_LIST_LINKS}}
)
async def list_tokens(request: Request, user_id: UserPath, who: Caller = Depends(caller)) -> TokenListReply:
    """The admin, or the user themself: every token's metadata (id, created, expiry, last use, status), no secret."""
    return await bus_of(request).ask(TokenListRequest(caller=who, user_id=user_id))


@router.delete("/api/v1/users/{user_id}/tokens/{token_id}", response_model=TokenRevokeReply)
async def revoke_token(
    request: Request, user_id: UserPath, token_id: uuid.UUID, who: Caller = Depends(caller)
) -> TokenRevokeReply:
    """The admin, or the owner: revoke at once, on every catalog replica; its next use gets 401 "token revoked"."""
    req = TokenRevokeRequest(caller=who, user_id=user_id, token_id=token_id)
    reply = await bus_of(request).ask(req)
    token_cache_of(request).clear()  # here at once; other gateways on the catalog change the revocation publishes
    return reply


@router.post(
    "/api/v1/catalog/import",
    response_model=ImportReply,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The file as written: llm_models.json, a presets .toml, or models.txt.",
            "content": {
                m: {"schema": {"type": "string"}} for m in ("application/json", "application/toml", "text/plain")
            },
        }
    },
)
async def import_manifest(
    request: Request,
    filename: str = Query("upload", min_length=1, max_length=512, description="Its name; picks the format."),
    format: Literal["json", "toml", "models.txt"] | None = None,
    who: Caller = Depends(admin),
) -> ImportReply:
    """Admin: one transaction; a bad file changes nothing and the error names the file, line or key, and field."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_IMPORT_BYTES:
        raise HTTPException(413, f"{filename}: {declared} bytes; an import is at most {MAX_IMPORT_BYTES} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_IMPORT_BYTES:
            raise HTTPException(413, f"{filename}: over {MAX_IMPORT_BYTES} bytes; an import is at most that")
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(422, f"{filename}: the file is not UTF-8 text (byte {exc.start})") from exc
    bus = bus_of(request)
    if len(raw) <= MAX_INLINE_BYTES:
        return await bus.ask(ImportRequest(caller=who, filename=filename, content=content, format=format), timeout_s=60)
    bus.require()
    staged = await staging.stage(bus.broker.connection, bytes(raw))
    try:
        req = ImportRequest(caller=who, filename=filename, staged=staged, format=format)
        return await bus.ask(req, timeout_s=300.0)
    finally:
        await staging.discard(bus.broker.connection, staged)


@router.get("/api/v1/catalog/export", response_class=Response)
async def export_manifest(
    request: Request, format: Literal["json", "toml", "models.txt"] = "json", who: Caller = Depends(admin)
) -> Response:
    """Admin: the catalog as a file of that format (profile sets / presets / models.txt)."""
    bus = bus_of(request)
    reply = await bus.ask(ExportRequest(caller=who, format=format), timeout_s=60.0)
    content: str | bytes = reply.content
    if reply.staged is not None:  # larger than one bus message: read from the object store, then deleted
        try:
            content = await staging.fetch(bus.broker.connection, reply.staged)
        finally:
            await staging.discard(bus.broker.connection, reply.staged)
    headers = {"Content-Disposition": f'attachment; filename="{reply.filename}"'}
    return Response(content, media_type=_MEDIA[reply.format], headers=headers)
