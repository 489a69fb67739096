"""The catalog's service layer: each operation validates in the domain, writes one transaction with its events
through the outbox, then refreshes the in-memory view that resolution reads."""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.catalog import (
    MAX_LISTED_MODELS,
    AuthReply,
    Caller,
    CatalogChanged,
    CatalogModelsReply,
    CatalogModelsRequest,
    ExportReply,
    ImportReply,
    ModelDoc,
    ModelRegistered,
    OverviewReply,
    ProfileChanged,
    ProfileDoc,
    ProfileInput,
    ProfileListReply,
    ProfileListRequest,
    ProfileSetDoc,
    ResolveReply,
    ResolveRequest,
    RolesReply,
    SetDefaultReply,
    TokenIssueReply,
    TokenIssueRequest,
    TokenListReply,
    TokenRevokeReply,
    UserConfigReply,
)
from services.catalog import domain, manifests, tokens
from services.catalog.domain import CatalogError, CatalogView, UserRecord
from services.catalog.library import Library
from services.catalog.settings import CatalogSettings
from services.catalog.store import CatalogStore
from services.runtime.outbox import Outbox

log = logging.getLogger(__name__)

Write = Callable[[AsyncSession], Awaitable[None]]
#: The warnings an import reply lists at most (then a count of the rest), so any file's reply fits one bus message.
MAX_WARNINGS = 200


class Catalog:
    def __init__(
        self, store: CatalogStore, outbox: Outbox, settings: CatalogSettings, library: Library, host_id: str
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.settings = settings
        self.library = library
        self.host_id = host_id
        self.instance_id = uuid.uuid4().hex[:12]
        self.view = CatalogView(active_set=settings.profile)
        self.ready = asyncio.Event()

    # --- lifecycle and cache ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Background task: once migrated, apply the curated library and load the view."""
        await self.store.database.migrated.wait()
        await self.apply_library()
        await self.reload()
        self.ready.set()
        log.info("catalog view loaded: %d models, %d profiles", len(self.view.models), len(self.view.profiles))

    async def reload(self) -> None:
        async with self.store.database.transaction() as session:
            view = await self.store.load_view(session)
        view.active_set = self.settings.profile
        view.global_parameters = dict(self.settings.global_parameters)
        self.view = view  # one assignment: readers see the old view or the new one, never half of each

    async def current(self) -> CatalogView:
        if not self.ready.is_set():
            try:
                await asyncio.wait_for(self.ready.wait(), self.settings.ready_timeout_s)
            except TimeoutError as exc:
                raise CatalogError(503, "the catalog is still loading (is PostgreSQL up?)") from exc
        return self.view

    def _changed(self, what: str) -> CatalogChanged:
        return CatalogChanged(producer="catalog", host=self.host_id, what=what, instance_id=self.instance_id)

    def _profile_changed(self, profile_id: uuid.UUID, change: str, owner_id: str | None = None) -> ProfileChanged:
        return ProfileChanged(
            producer="catalog", host=self.host_id, profile_id=profile_id, change=change, owner_id=owner_id
        )

    async def _write(self, what: str, write: Write) -> None:
        """One transaction: the change, its events and a CatalogChanged for the other replicas; then reload."""
        async with self.store.database.transaction() as session:
            await write(session)
            await self.outbox.add(session, self._changed(what))
        self.outbox.wake()
        await self.reload()

    async def apply_library(self) -> None:
        """Insert what is new, update curated models except locally edited fields; never touch user data."""
        async with self.store.database.transaction() as session:
            view = await self.store.load_view(session)
            for model in self.library.models:
                stored = view.models.get(model.id)
                merged = domain.merge_curated(model, stored)
                if stored is None or merged != stored:
                    await self.store.save_model(session, merged)
                if stored is None:
                    await self.outbox.add(session, self._registered(merged))
            for profile in self.library.profiles:
                if await self.store.insert_profile_if_missing(session, profile):
                    await self.outbox.add(session, self._profile_changed(profile.id, "created"))
            for profile_set in self.library.sets:
                await self.store.insert_set_if_missing(session, profile_set)
            if view.default_model is None and self.library.default_model:
                await self.store.set_meta(session, "default_model", self.library.default_model)
        self.outbox.wake()

    def _registered(self, model: ModelDoc) -> ModelRegistered:
        return ModelRegistered(
            producer="catalog",
            host=self.host_id,
            model_id=model.id,
            display_name=model.display_name,
            source=model.origin,
        )

    # --- reads: answered from the in-memory view, never from PostgreSQL -------------------------------------------

    async def resolve(self, req: ResolveRequest) -> ResolveReply:
        # The hot path: once loaded, no await before the pure resolution.
        view = self.view if self.ready.is_set() else await self.current()
        return domain.resolve(view, req)

    async def roles(self, profile_set: str | None) -> RolesReply:
        name, roles = domain.role_entries(await self.current(), profile_set)
        return RolesReply(profile_set=name, roles=roles)

    async def list_profiles(self, req: ProfileListRequest) -> ProfileListReply:
        view = await self.current()
        return ProfileListReply(profiles=domain.visible_profiles(view, req.caller, req.type, req.owner_id))

    async def models(self, query: CatalogModelsRequest) -> CatalogModelsReply:
        return CatalogModelsReply(models=domain.filter_models(await self.current(), query))

    async def model_info(self, name: str) -> ModelDoc:
        model = (await self.current()).find_model(name)
        if model is None:
            raise CatalogError(404, f"model: {name!r} is not in the library", field="model")
        return model

    async def overview(self, caller: Caller, user_id: str | None) -> OverviewReply:
        """The active set with each role resolved; a role that does not resolve is left out (and logged)."""
        domain.require_admin(caller, "the models overview")
        view = await self.current()
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

    # --- auth ------------------------------------------------------------------------------------------------------

    async def authenticate(self, token: str) -> AuthReply:
        """Checked against PostgreSQL on every call (no cache here), so a revocation holds at once on every replica;
        a gateway may reuse the answer until the token's expiry (docs/catalog.md, tokens)."""
        now = _now()
        async with self.store.database.transaction() as session:
            record = tokens.check_usable(await self.store.find_token(session, token), now)
            if tokens.needs_touch(record, now, self.settings.token_touch_interval_s):
                await self.store.touch_token(session, record.token_id, now)
        return AuthReply(user_id=record.user_id, token_id=record.token_id, expires_at=record.expires_at)

    async def issue_token(self, caller: Caller, req: TokenIssueRequest) -> TokenIssueReply:
        domain.require_admin(caller, "issuing tokens")
        user_id, display_name = req.user_id, req.display_name
        if user_id == caller.user_id:
            raise CatalogError(
                422, f"user_id: {user_id!r} is the admin caller's own name; pick another", field="user_id"
            )
        now = _now()
        record = tokens.TokenRecord(uuid.uuid4(), user_id, now, tokens.expiry(now, req.expires_in_s, req.expires_at))
        view = await self.current()
        token = "mf_" + secrets.token_urlsafe(32)
        user = view.users.get(user_id) or UserRecord(user_id, display_name)
        if display_name:
            user = UserRecord(user.user_id, display_name, user.profiles, user.overrides)

        async def write(session: AsyncSession) -> None:
            await self.store.save_user(session, user)
            await self.store.add_token(session, record, token)

        await self._write(f"token for {user_id}", write)
        return TokenIssueReply(
            user_id=user_id, token=token, token_id=record.token_id, created_at=now, expires_at=record.expires_at
        )

    async def list_tokens(self, caller: Caller, user_id: str) -> TokenListReply:
        domain.check_user(caller, user_id)
        now = _now()
        async with self.store.database.transaction() as session:
            records = await self.store.user_tokens(session, user_id)
        return TokenListReply(user_id=user_id, tokens=[tokens.doc(r, now) for r in records])

    async def revoke_token(self, caller: Caller, user_id: str, token_id: uuid.UUID) -> TokenRevokeReply:
        """The row is marked, never deleted, so a later use is told "revoked" rather than "unknown"."""
        domain.check_user(caller, user_id)
        now = _now()
        async with self.store.database.transaction() as session:
            tokens.owned(await self.store.token_by_id(session, token_id), user_id, token_id)
            await self.store.revoke_token(session, token_id, now)
            await self.outbox.add(session, self._changed(f"token {token_id} revoked"))
            record = await self.store.token_by_id(session, token_id)
        self.outbox.wake()
        assert record is not None
        log.info("token %s of %s revoked by %s", token_id, user_id, caller.user_id)
        return TokenRevokeReply(token=tokens.doc(record, now))

    # --- profiles --------------------------------------------------------------------------------------------------

    async def get_profile(self, caller: Caller, profile_id: uuid.UUID) -> ProfileDoc:
        profile = (await self.current()).profiles.get(profile_id)
        if profile is None:
            raise CatalogError(404, f"no profile {profile_id}", field="profile_id")
        domain.check_read(caller, profile)
        return profile

    async def save_profile(self, caller: Caller, profile_id: uuid.UUID | None, inp: ProfileInput) -> ProfileDoc:
        view = await self.current()
        existing = None
        if profile_id is not None:
            existing = view.profiles.get(profile_id)
            if existing is None:
                raise CatalogError(404, f"no profile {profile_id}", field="profile_id")
            domain.check_write(caller, existing)
        profile = domain.build_profile(view, caller, existing, inp, uuid.uuid4())
        change = "updated" if existing else "created"

        async def write(session: AsyncSession) -> None:
            await self.store.save_profile(session, profile)
            await self.outbox.add(session, self._profile_changed(profile.id, change, profile.owner_id))

        await self._write(f"profile {profile.id} {change}", write)
        return profile

    async def delete_profile(self, caller: Caller, profile_id: uuid.UUID) -> None:
        profile = await self.get_profile(caller, profile_id)
        domain.check_write(caller, profile)
        if profile.system_default:
            raise CatalogError(
                409, f"profile {profile_id} is a system default: edit it, it cannot be deleted", field="profile_id"
            )

        async def write(session: AsyncSession) -> None:
            await self.store.delete_profile(session, profile_id)
            await self.outbox.add(session, self._profile_changed(profile_id, "deleted", profile.owner_id))

        await self._write(f"profile {profile_id} deleted", write)

    # --- users -----------------------------------------------------------------------------------------------------

    async def user_config(self, caller: Caller, user_id: str) -> UserConfigReply:
        domain.check_user(caller, user_id)
        view = await self.current()
        user = view.users.get(user_id) or UserRecord(user_id)
        return UserConfigReply(
            user_id=user_id, profiles=domain.effective_config(view, user_id), overrides=user.overrides
        )

    async def set_user_config(
        self, caller: Caller, user_id: str, profiles: dict[str, uuid.UUID | None], overrides: dict[str, Any] | None
    ) -> UserConfigReply:
        domain.check_user(caller, user_id)
        view = await self.current()
        if user_id not in view.users and not caller.admin:
            raise CatalogError(404, f"no user {user_id!r}", field="user_id")
        user = domain.apply_config(view, view.users.get(user_id) or UserRecord(user_id), profiles, overrides)

        async def write(session: AsyncSession) -> None:
            await self.store.save_user(session, user)

        await self._write(f"profile config of {user_id}", write)
        return await self.user_config(caller, user_id)

    # --- models, import, export ------------------------------------------------------------------------------------

    async def set_default(self, caller: Caller, model: str) -> SetDefaultReply:
        domain.require_admin(caller, "setting the default model")
        view = await self.current()
        domain.check_model_name(view, model, "model")
        found = view.find_model(model)
        name = found.id if found else model

        async def write(session: AsyncSession) -> None:
            await self.store.set_meta(session, "default_model", name)

        await self._write(f"default model {name}", write)
        return SetDefaultReply(default_model=name, model_ref=domain.model_ref_of(found)[0] if found else model)

    def require_admin_early(self, caller: Caller) -> None:
        """Refuse a non-admin before a staged file is read."""
        domain.require_admin(caller, "importing a manifest")

    async def patch_model(self, caller: Caller, name: str, changes: dict[str, Any]) -> ModelDoc:
        """One library model's fields changed (validated, recorded as local edits) in one transaction."""
        domain.require_admin(caller, "editing a library model")
        view = await self.current()
        model = view.find_model(name)
        if model is None:
            raise CatalogError(404, f"model: {name!r} is not in the library", field="model")
        patched = domain.patch_model(model, changes)
        if patched == model:
            return model

        async def write(session: AsyncSession) -> None:
            await self.store.save_model(session, patched)

        await self._write(f"model {model.id} edited", write)
        log.info("model %s edited by %s: %s", model.id, caller.user_id, ", ".join(sorted(changes)))
        return patched

    async def import_file(self, caller: Caller, filename: str, content: str, fmt: str | None) -> ImportReply:
        domain.require_admin(caller, "importing a manifest")
        view = await self.current()
        try:
            plan = manifests.parse(filename, content, fmt)
        except manifests.ManifestError as exc:
            # The request field at fault is the file (the detail names its line or key and the manifest's field).
            raise CatalogError(422, str(exc), field="format" if exc.where == "format" else "content") from exc
        known = {*view.presets, *plan.presets}
        for profile_set in plan.sets:
            for role, entry in profile_set.models.items():
                if entry.performance_profile is not None and entry.performance_profile not in known:
                    plan.warnings.append(
                        f"{filename}: profiles.{profile_set.name}.models.{role}: performance profile "
                        f"{entry.performance_profile!r} is not defined yet (import its TOML): resolving the role "
                        "fails with a 404 until it is"
                    )
        for warning in plan.warnings[:MAX_WARNINGS]:
            log.warning("import: %s", warning)
        if len(plan.warnings) > MAX_WARNINGS:  # the reply must fit one bus message, whatever the file's size
            more = len(plan.warnings) - MAX_WARNINGS
            plan.warnings[MAX_WARNINGS:] = [f"{filename}: {more} more warnings not shown"]
            log.warning("import: %s", plan.warnings[-1])
        models = [_as_local_edit(_existing(view, m), m, plan.model_fields) for m in plan.models]

        async def write(session: AsyncSession) -> None:
            for profile_set in plan.sets:
                await self.store.save_set(session, profile_set, filename)
            for model in models:
                await self.store.save_model(session, model)
                if model.id not in view.models:
                    await self.outbox.add(session, self._registered(model))
            for name, preset in plan.presets.items():
                await self.store.save_preset(session, name, preset)

        await self._write(f"import of {filename}", write)
        return ImportReply(
            filename=filename, format=plan.format, profile_sets=[s.name for s in plan.sets],
            models=[m.id for m in models[:MAX_LISTED_MODELS]], model_count=len(models),
            performance_profiles=list(plan.presets), warnings=plan.warnings,
        )  # fmt: skip

    async def export(self, caller: Caller, fmt: str) -> ExportReply:
        domain.require_admin(caller, "exporting the catalog")
        view = await self.current()
        if fmt == "json":
            return ExportReply(
                format=fmt, filename="llm_models.json", content=manifests.export_json([*view.sets.values()])
            )
        if fmt == "toml":
            content = manifests.export_toml([*view.models.values()], view.presets)
            return ExportReply(format=fmt, filename="presets.toml", content=content)
        return ExportReply(
            format=fmt, filename="models.txt", content=manifests.export_models_txt([*view.models.values()])
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _existing(view: CatalogView, imported: ModelDoc) -> ModelDoc | None:
    """The library model an imported one is: the same id, or (a models.txt line naming a curated Hugging Face model's
    repo, or a local model's path) the model of that name served by the same provider, which the import edits rather
    than duplicating. An Ollama model whose card names a GGUF repo is not the repo's Hugging Face model."""
    found = view.models.get(imported.id) or view.find_model(imported.id)
    return found if found is not None and (found.id == imported.id or found.provider == imported.provider) else None


def _as_local_edit(stored: ModelDoc | None, imported: ModelDoc, carried: frozenset[str]) -> ModelDoc:
    """An import over an existing model is a local edit: the fields it changes survive curated updates. `sources`
    merge (a models.txt line names a repo, not the model's Ollama name or file, which it keeps)."""
    if stored is None:
        return imported
    old, new = stored.model_dump(), imported.model_dump()
    if "sources" in carried:
        new["sources"] = {**old["sources"], **{k: v for k, v in new["sources"].items() if v is not None}}
    changed = [k for k in carried if new[k] != old.get(k) and new[k] not in (None, "", [], {})]
    data = {**old, **{k: new[k] for k in changed}}
    data["edited_fields"] = sorted({*stored.edited_fields, *changed})
    return ModelDoc.model_validate(data)
