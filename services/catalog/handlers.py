"""Catalog bus handlers: each `rpc.catalog.*` subject is one typed handler that calls one operation and replies."""

from __future__ import annotations

from faststream.nats import DeliverPolicy

from contracts.catalog import (
    MAX_INLINE_BYTES,
    AuthReply,
    AuthRequest,
    CatalogChanged,
    CatalogModelsReply,
    CatalogModelsRequest,
    ExportReply,
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
    ProfileListReply,
    ProfileListRequest,
    ProfileSaveRequest,
    ResolveReply,
    ResolveRequest,
    RolesReply,
    RolesRequest,
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
from contracts.subjects import EVENTS_STREAM
from services.catalog.domain import CatalogError
from services.catalog.operations import Catalog
from services.runtime import staging
from services.runtime.bus import jstream
from services.runtime.dlq import StreamRouter
from services.runtime.rpc import Rpc


def register(rpc: Rpc, streams: StreamRouter, catalog: Catalog) -> None:
    """Request/reply handlers join the queue group `catalog` (the service's name), so replicas share the load.

    A `CatalogError` (an `RpcError`) raised below becomes the typed error reply; an invalid request is a 422
    naming the field, answered by the seam before any handler runs.
    """
    register_profiles(rpc, catalog)
    register_tokens(rpc, catalog)
    register_library(rpc, catalog)
    register_invalidation(streams, catalog)


def register_profiles(rpc: Rpc, catalog: Catalog) -> None:
    @rpc.handler(ResolveRequest)
    async def on_resolve(req: ResolveRequest) -> ResolveReply:
        """Consumes rpc.catalog.resolve.v1; replies ResolveReply from the in-memory view. Read-only."""
        return await catalog.resolve(req)

    @rpc.handler(RolesRequest)
    async def on_roles(req: RolesRequest) -> RolesReply:
        """Consumes rpc.catalog.roles.v1; replies RolesReply (roles of the active or named set). Read-only."""
        return await catalog.roles(req.profile_set)

    @rpc.handler(ProfileListRequest)
    async def on_profiles_list(req: ProfileListRequest) -> ProfileListReply:
        """Consumes rpc.catalog.profiles.list.v1; replies ProfileListReply (what the caller may read). Read-only."""
        return await catalog.list_profiles(req)

    @rpc.handler(ProfileGetRequest)
    async def on_profile_get(req: ProfileGetRequest) -> ProfileDoc:
        """Consumes rpc.catalog.profiles.get.v1; replies ProfileDoc, 403 for another user's. Read-only."""
        return await catalog.get_profile(req.caller, req.profile_id)

    @rpc.handler(ProfileSaveRequest)
    async def on_profile_save(req: ProfileSaveRequest) -> ProfileDoc:
        """Consumes rpc.catalog.profiles.save.v1; emits evt.catalog.profile.changed.v1. An update is idempotent."""
        return await catalog.save_profile(req.caller, req.profile_id, req.profile)

    @rpc.handler(ProfileDeleteRequest)
    async def on_profile_delete(req: ProfileDeleteRequest) -> ProfileDeleteReply:
        """Consumes rpc.catalog.profiles.delete.v1; emits evt.catalog.profile.changed.v1 (deleted).

        Not idempotent: a second delete of the same profile_id is a 404."""
        await catalog.delete_profile(req.caller, req.profile_id)
        return ProfileDeleteReply(profile_id=req.profile_id)

    @rpc.handler(UserConfigRequest)
    async def on_user_config(req: UserConfigRequest) -> UserConfigReply:
        """Consumes rpc.catalog.userconfig.set.v1; replies UserConfigReply. Idempotent (sets, never appends)."""
        return await catalog.set_user_config(req.caller, req.user_id, req.profiles, req.overrides)

    @rpc.handler(UserConfigGetRequest)
    async def on_user_config_get(req: UserConfigGetRequest) -> UserConfigReply:
        """Consumes rpc.catalog.userconfig.get.v1; replies UserConfigReply. Read-only."""
        return await catalog.user_config(req.caller, req.user_id)


def register_tokens(rpc: Rpc, catalog: Catalog) -> None:
    @rpc.handler(AuthRequest)
    async def on_auth(req: AuthRequest) -> AuthReply:
        """Consumes rpc.catalog.auth.v1; replies AuthReply for a usable user token, 401 naming why otherwise.

        Touches the token's last_used_at (at most once per token_touch_interval_s); otherwise read-only.
        """
        return await catalog.authenticate(req.token)

    @rpc.handler(TokenIssueRequest)
    async def on_token(req: TokenIssueRequest) -> TokenIssueReply:
        """Consumes rpc.catalog.token.issue.v1 (admin); mints a token. Not idempotent by design: each call mints one."""
        return await catalog.issue_token(req.caller, req)

    @rpc.handler(TokenListRequest)
    async def on_token_list(req: TokenListRequest) -> TokenListReply:
        """Consumes rpc.catalog.token.list.v1 (admin or the user); replies TokenListReply, metadata only. Read-only."""
        return await catalog.list_tokens(req.caller, req.user_id)

    @rpc.handler(TokenRevokeRequest)
    async def on_token_revoke(req: TokenRevokeRequest) -> TokenRevokeReply:
        """Consumes rpc.catalog.token.revoke.v1 (admin or the owner); emits evt.catalog.entries.changed.v1.

        Idempotent on token_id: a second revoke keeps the first revoked_at.
        """
        return await catalog.revoke_token(req.caller, req.user_id, req.token_id)


def register_library(rpc: Rpc, catalog: Catalog) -> None:
    @rpc.handler(CatalogModelsRequest)
    async def on_models(req: CatalogModelsRequest) -> CatalogModelsReply:
        """Consumes rpc.catalog.models.list.v1; replies CatalogModelsReply (filtered library). Read-only."""
        return await catalog.models(req)

    @rpc.handler(ModelInfoRequest)
    async def on_model_info(req: ModelInfoRequest) -> ModelDoc:
        """Consumes rpc.catalog.models.info.v1; replies ModelDoc by id, Ollama name or repo (404: none). Read-only."""
        return await catalog.model_info(req.model)

    @rpc.handler(ModelPatchRequest)
    async def on_model_patch(req: ModelPatchRequest) -> ModelDoc:
        """Consumes rpc.catalog.models.patch.v1 (admin); replies the stored ModelDoc; emits
        evt.catalog.entries.changed.v1. One transaction; idempotent (the same patch twice leaves the same state)."""
        return await catalog.patch_model(req.caller, req.model, req.changes)

    @rpc.handler(SetDefaultRequest)
    async def on_default(req: SetDefaultRequest) -> SetDefaultReply:
        """Consumes rpc.catalog.models.default.v1 (admin); replies SetDefaultReply. Idempotent on the model name."""
        return await catalog.set_default(req.caller, req.model)

    @rpc.handler(OverviewRequest)
    async def on_overview(req: OverviewRequest) -> OverviewReply:
        """Consumes rpc.catalog.overview.v1 (admin); replies OverviewReply with each active role resolved. Read-only."""
        return await catalog.overview(req.caller, req.user_id)

    @rpc.handler(ImportRequest)
    async def on_import(req: ImportRequest) -> ImportReply:
        """Consumes rpc.catalog.import.v1 (admin); one transaction; emits model.registered for new models.

        Idempotent on the file's content: importing the same file twice leaves the same state. A `staged` file is
        read from the object store (the sender deletes it).
        """
        content = req.content
        if req.staged is not None:
            catalog.require_admin_early(req.caller)
            raw = await staging.fetch(rpc.broker.connection, req.staged)
            try:
                content = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CatalogError(
                    422, f"{req.filename}: the file is not UTF-8 text (byte {exc.start})", field="content"
                ) from exc
        return await catalog.import_file(req.caller, req.filename, content, req.format)

    @rpc.handler(ExportRequest)
    async def on_export(req: ExportRequest) -> ExportReply:
        """Consumes rpc.catalog.export.v1 (admin); replies ExportReply with the file's text, staged in the object
        store when larger than MAX_INLINE_BYTES (the reader deletes it). Read-only."""
        reply = await catalog.export(req.caller, req.format)
        data = reply.content.encode()
        if len(data) <= MAX_INLINE_BYTES:
            return reply
        staged = await staging.stage(rpc.broker.connection, data)
        return ExportReply(format=reply.format, filename=reply.filename, staged=staged)


def register_invalidation(streams: StreamRouter, catalog: Catalog) -> None:
    # No durable: every replica hears every change from now on and reloads its own view. The reload reads
    # PostgreSQL, so a failure is retried by the backoff schedule (docs/delivery.md).
    consumer = streams.deliveries.retried(CatalogChanged.SUBJECT)

    @streams.subscriber(
        CatalogChanged.SUBJECT,
        stream=jstream(EVENTS_STREAM),
        deliver_policy=DeliverPolicy.NEW,
        config=consumer.config,
        ack_policy=consumer.ack_policy,
    )
    async def on_changed(event: CatalogChanged) -> None:
        """Consumes evt.catalog.entries.changed.v1 from other replicas; reloads the view. Idempotent (a reload).
        A failed reload is retried with backoff, then dead-lettered."""
        if event.instance_id != catalog.instance_id and catalog.ready.is_set():
            await catalog.reload()
