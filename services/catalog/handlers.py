"""Catalog bus handlers: decode, call the catalog, reply (or `{"error": {status, detail}}`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from faststream import AckPolicy
from faststream.nats import DeliverPolicy, NatsBroker, NatsRouter
from pydantic import BaseModel, ValidationError

from contracts.catalog import (
    AuthRequest,
    CatalogChanged,
    CatalogModelsReply,
    CatalogModelsRequest,
    ExportRequest,
    ImportRequest,
    ModelInfoRequest,
    OverviewReply,
    OverviewRequest,
    ProfileDeleteReply,
    ProfileDeleteRequest,
    ProfileGetRequest,
    ProfileListReply,
    ProfileListRequest,
    ProfileSaveRequest,
    ProfileSetDoc,
    ResolveRequest,
    RolesReply,
    RolesRequest,
    SetDefaultRequest,
    TokenIssueRequest,
    TokenListRequest,
    TokenRevokeRequest,
    UserConfigGetRequest,
    UserConfigRequest,
)
from contracts.subjects import EVENTS_STREAM
from services.catalog import domain
from services.catalog.domain import CatalogError
from services.catalog.operations import Catalog
from services.runtime.bus import jstream

log = logging.getLogger(__name__)

Q = TypeVar("Q", bound=BaseModel)
Reply = dict[str, Any]


def error(status: int, detail: object) -> Reply:
    return {"error": {"status": status, "detail": detail}}


def decode(cls: type[Q], body: Any) -> Q:
    """Validate the request ourselves so a bad one gets a 422 naming the field, not a silent timeout."""
    try:
        return cls.model_validate(body if body is not None else {})
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(body)'}: {e['msg']}" for e in exc.errors())
        raise CatalogError(422, fields) from exc


async def answer(call: Callable[[], Awaitable[BaseModel]]) -> Reply:
    try:
        return (await call()).model_dump(mode="json")
    except CatalogError as exc:
        return error(exc.status, exc.detail)
    except Exception as exc:  # a fault of ours or of PostgreSQL: answer it rather than let the caller time out
        log.exception("catalog request failed")
        return error(503 if "connect" in str(exc).lower() else 500, f"{type(exc).__name__}: {exc}"[:500])


def register(broker: NatsBroker, streams: NatsRouter, catalog: Catalog) -> None:
    """Request/reply handlers join the queue group `catalog`, so replicas share the load."""
    sub = broker.subscriber

    @sub(ResolveRequest.SUBJECT, queue="catalog", title="catalog resolve")
    async def on_resolve(body: Any) -> Reply:
        """Consumes rpc.catalog.resolve.v1; replies ResolveReply from the in-memory view. Read-only."""
        try:
            req = decode(ResolveRequest, body)
            view = catalog.view if catalog.ready.is_set() else await catalog.current()
            return domain.resolve(view, req).model_dump(mode="json")
        except CatalogError as exc:
            return error(exc.status, exc.detail)

    @sub(RolesRequest.SUBJECT, queue="catalog", title="catalog roles")
    async def on_roles(body: Any) -> Reply:
        """Consumes rpc.catalog.roles.v1; replies RolesReply (roles of the active or named set). Read-only."""

        async def run() -> RolesReply:
            req = decode(RolesRequest, body)
            name, roles = domain.role_entries(await catalog.current(), req.profile_set)
            return RolesReply(profile_set=name, roles=roles)

        return await answer(run)

    @sub(AuthRequest.SUBJECT, queue="catalog", title="catalog auth")
    async def on_auth(body: Any) -> Reply:
        """Consumes rpc.catalog.auth.v1; replies AuthReply for a usable user token, 401 naming why otherwise.

        Touches the token's last_used_at (at most once per token_touch_interval_s); otherwise read-only.
        """
        return await answer(lambda: catalog.authenticate(decode(AuthRequest, body).token))

    @sub(TokenIssueRequest.SUBJECT, queue="catalog", title="catalog token issue")
    async def on_token(body: Any) -> Reply:
        """Consumes rpc.catalog.token.issue.v1 (admin); mints a token. Not idempotent by design: each call mints one."""

        async def run() -> BaseModel:
            req = decode(TokenIssueRequest, body)
            return await catalog.issue_token(req.caller, req)

        return await answer(run)

    @sub(TokenListRequest.SUBJECT, queue="catalog", title="catalog token list")
    async def on_token_list(body: Any) -> Reply:
        """Consumes rpc.catalog.token.list.v1 (admin or the user); replies TokenListReply, metadata only. Read-only."""

        async def run() -> BaseModel:
            req = decode(TokenListRequest, body)
            return await catalog.list_tokens(req.caller, req.user_id)

        return await answer(run)

    @sub(TokenRevokeRequest.SUBJECT, queue="catalog", title="catalog token revoke")
    async def on_token_revoke(body: Any) -> Reply:
        """Consumes rpc.catalog.token.revoke.v1 (admin or the owner); emits evt.catalog.entries.changed.v1.

        Idempotent on token_id: a second revoke keeps the first revoked_at.
        """

        async def run() -> BaseModel:
            req = decode(TokenRevokeRequest, body)
            return await catalog.revoke_token(req.caller, req.user_id, req.token_id)

        return await answer(run)

    @sub(ProfileListRequest.SUBJECT, queue="catalog", title="catalog profiles list")
    async def on_profiles_list(body: Any) -> Reply:
        """Consumes rpc.catalog.profiles.list.v1; replies ProfileListReply (what the caller may read). Read-only."""

        async def run() -> BaseModel:
            req = decode(ProfileListRequest, body)
            return ProfileListReply(
                profiles=domain.visible_profiles(await catalog.current(), req.caller, req.type, req.owner_id)
            )

        return await answer(run)

    @sub(ProfileGetRequest.SUBJECT, queue="catalog", title="catalog profiles get")
    async def on_profile_get(body: Any) -> Reply:
        """Consumes rpc.catalog.profiles.get.v1; replies ProfileDoc, 403 for another user's. Read-only."""

        async def run() -> BaseModel:
            req = decode(ProfileGetRequest, body)
            return await catalog.get_profile(req.caller, req.profile_id)

        return await answer(run)

    @sub(ProfileSaveRequest.SUBJECT, queue="catalog", title="catalog profiles save")
    async def on_profile_save(body: Any) -> Reply:
        """Consumes rpc.catalog.profiles.save.v1; emits evt.catalog.profile.changed.v1. An update is idempotent."""

        async def run() -> BaseModel:
            req = decode(ProfileSaveRequest, body)
            return await catalog.save_profile(req.caller, req.profile_id, req.profile)

        return await answer(run)

    @sub(ProfileDeleteRequest.SUBJECT, queue="catalog", title="catalog profiles delete")
    async def on_profile_delete(body: Any) -> Reply:
        """Consumes rpc.catalog.profiles.delete.v1; emits evt.catalog.profile.changed.v1 (deleted)."""

        async def run() -> BaseModel:
            req = decode(ProfileDeleteRequest, body)
            await catalog.delete_profile(req.caller, req.profile_id)
            return ProfileDeleteReply(profile_id=req.profile_id)

        return await answer(run)

    @sub(UserConfigRequest.SUBJECT, queue="catalog", title="catalog user config set")
    async def on_user_config(body: Any) -> Reply:
        """Consumes rpc.catalog.userconfig.set.v1; replies UserConfigReply. Idempotent (sets, never appends)."""

        async def run() -> BaseModel:
            req = decode(UserConfigRequest, body)
            return await catalog.set_user_config(req.caller, req.user_id, req.profiles, req.overrides)

        return await answer(run)

    @sub(UserConfigGetRequest.SUBJECT, queue="catalog", title="catalog user config get")
    async def on_user_config_get(body: Any) -> Reply:
        """Consumes rpc.catalog.userconfig.get.v1; replies UserConfigReply. Read-only."""

        async def run() -> BaseModel:
            req = decode(UserConfigGetRequest, body)
            return await catalog.user_config(req.caller, req.user_id)

        return await answer(run)

    register_library(broker, catalog)
    register_invalidation(streams, catalog)


def register_library(broker: NatsBroker, catalog: Catalog) -> None:
    sub = broker.subscriber

    @sub(CatalogModelsRequest.SUBJECT, queue="catalog", title="catalog models list")
    async def on_models(body: Any) -> Reply:
        """Consumes rpc.catalog.models.list.v1; replies CatalogModelsReply (filtered library). Read-only."""

        async def run() -> BaseModel:
            req = decode(CatalogModelsRequest, body)
            return CatalogModelsReply(models=domain.filter_models(await catalog.current(), req))

        return await answer(run)

    @sub(ModelInfoRequest.SUBJECT, queue="catalog", title="catalog model info")
    async def on_model_info(body: Any) -> Reply:
        """Consumes rpc.catalog.models.info.v1; replies ModelDoc by id, Ollama name or repo. Read-only."""

        async def run() -> BaseModel:
            name = decode(ModelInfoRequest, body).model
            model = (await catalog.current()).find_model(name)
            if model is None:
                raise CatalogError(404, f"model: {name!r} is not in the library")
            return model

        return await answer(run)

    @sub(SetDefaultRequest.SUBJECT, queue="catalog", title="catalog default model")
    async def on_default(body: Any) -> Reply:
        """Consumes rpc.catalog.models.default.v1 (admin); replies SetDefaultReply. Idempotent on the model name."""

        async def run() -> BaseModel:
            req = decode(SetDefaultRequest, body)
            return await catalog.set_default(req.caller, req.model)

        return await answer(run)

    @sub(OverviewRequest.SUBJECT, queue="catalog", title="catalog overview")
    async def on_overview(body: Any) -> Reply:
        """Consumes rpc.catalog.overview.v1 (admin); replies OverviewReply with each active role resolved."""

        async def run() -> BaseModel:
            req = decode(OverviewRequest, body)
            domain.require_admin(req.caller, "the models overview")
            return overview(await catalog.current(), req.user_id)

        return await answer(run)

    @sub(ImportRequest.SUBJECT, queue="catalog", title="catalog import")
    async def on_import(body: Any) -> Reply:
        """Consumes rpc.catalog.import.v1 (admin); one transaction; emits model.registered for new models.

        Idempotent on the file's content: importing the same file twice leaves the same state.
        """

        async def run() -> BaseModel:
            req = decode(ImportRequest, body)
            return await catalog.import_file(req.caller, req.filename, req.content, req.format)

        return await answer(run)

    @sub(ExportRequest.SUBJECT, queue="catalog", title="catalog export")
    async def on_export(body: Any) -> Reply:
        """Consumes rpc.catalog.export.v1 (admin); replies ExportReply with the file's text. Read-only."""

        async def run() -> BaseModel:
            req = decode(ExportRequest, body)
            return await catalog.export(req.caller, req.format)

        return await answer(run)


def overview(view: domain.CatalogView, user_id: str | None) -> OverviewReply:
    active = view.sets.get(view.active_set) or ProfileSetDoc(name=view.active_set)
    resolved = {}
    for role in active.models:
        try:
            resolved[role] = domain.resolve(view, ResolveRequest(role=role, user_id=user_id))
        except CatalogError as exc:
            log.warning("overview: role %s does not resolve: %s", role, exc)
    return OverviewReply(
        active_profile_set=view.active_set, active=active, resolved=resolved,
        available_profile_sets=sorted(view.sets.values(), key=lambda s: s.name), default_model=view.default_model,
        performance_profiles={name: p.get("parameters", {}) for name, p in view.presets.items()},
    )  # fmt: skip


def register_invalidation(streams: NatsRouter, catalog: Catalog) -> None:
    # No durable: every replica hears every change from now on and reloads its own view.
    @streams.subscriber(
        CatalogChanged.SUBJECT,
        stream=jstream(EVENTS_STREAM),
        deliver_policy=DeliverPolicy.NEW,
        ack_policy=AckPolicy.ACK,
    )
    async def on_changed(event: CatalogChanged) -> None:
        """Consumes evt.catalog.entries.changed.v1 from other replicas; reloads the view. Idempotent (a reload)."""
        if event.instance_id != catalog.instance_id and catalog.ready.is_set():
            await catalog.reload()
