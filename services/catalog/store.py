"""Catalog tables (schema `catalog`) and their async repository."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel

from contracts.catalog import PROFILE_TYPES, ModelDoc, ProfileDoc, ProfileSetDoc
from services.catalog.domain import SYSTEM_DEFAULT_IDS, CatalogView, UserRecord, model_size
from services.catalog.tokens import TokenRecord
from services.runtime.db import Database

SCHEMA = "catalog"


def _now() -> datetime:
    return datetime.now(UTC)


def _ts() -> Any:
    return sa.DateTime(timezone=True)


class ModelRow(SQLModel, table=True):
    """One library model; filter columns are real columns, the rest of the document is JSON."""

    __tablename__ = "models"
    __table_args__ = {"schema": SCHEMA}

    id: str = Field(primary_key=True)
    display_name: str
    family: str = ""
    provider: str = "ollama"
    category: str = "balanced"
    origin: str = "curated"
    parameter_count: int | None = Field(default=None, sa_type=sa.BigInteger)
    size_bytes: int | None = Field(default=None, sa_type=sa.BigInteger, description="Smallest quantization.")
    doc: dict[str, Any] = Field(sa_type=sa.JSON)
    updated_at: datetime = Field(default_factory=_now, sa_type=_ts())


class ProfileRow(SQLModel, table=True):
    __tablename__ = "profiles"
    __table_args__ = {"schema": SCHEMA}

    id: uuid.UUID = Field(primary_key=True)
    owner_id: str | None = Field(default=None, index=True)
    name: str
    type: int = Field(index=True)
    description: str = ""
    model_name: str
    parameters: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    system_prompt: str = ""
    circuit_breaker: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    gpu_config: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    created_at: datetime = Field(default_factory=_now, sa_type=_ts())
    updated_at: datetime = Field(default_factory=_now, sa_type=_ts())


class ProfileSetRow(SQLModel, table=True):
    """A named profile set: role -> model entry, kept in the order the manifest wrote them."""

    __tablename__ = "profile_sets"
    __table_args__ = {"schema": SCHEMA}

    name: str = Field(primary_key=True)
    models: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    source: str = ""
    updated_at: datetime = Field(default_factory=_now, sa_type=_ts())


class PerformanceProfileRow(SQLModel, table=True):
    __tablename__ = "performance_profiles"
    __table_args__ = {"schema": SCHEMA}

    name: str = Field(primary_key=True)
    doc: dict[str, Any] = Field(sa_type=sa.JSON)


class UserRow(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = {"schema": SCHEMA}

    id: str = Field(primary_key=True)
    display_name: str = ""
    profiles: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    overrides: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    created_at: datetime = Field(default_factory=_now, sa_type=_ts())


class TokenRow(SQLModel, table=True):
    """A user's bearer token, stored only as its sha256."""

    __tablename__ = "tokens"
    __table_args__ = {"schema": SCHEMA}

    token_sha256: str = Field(primary_key=True)
    id: uuid.UUID = Field(default_factory=uuid.uuid4, unique=True)
    user_id: str = Field(index=True)
    created_at: datetime = Field(default_factory=_now, sa_type=_ts())
    expires_at: datetime | None = Field(default=None, sa_type=_ts())
    last_used_at: datetime | None = Field(default=None, sa_type=_ts())
    revoked_at: datetime | None = Field(default=None, sa_type=_ts())


class MetaRow(SQLModel, table=True):
    __tablename__ = "meta"
    __table_args__ = {"schema": SCHEMA}

    key: str = Field(primary_key=True)
    value: Any = Field(default=None, sa_type=sa.JSON)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _model_values(m: ModelDoc) -> dict[str, Any]:
    return {
        "id": m.id, "display_name": m.display_name, "family": m.family, "provider": m.provider,
        "category": m.category, "origin": m.origin, "parameter_count": m.parameter_count,
        "size_bytes": model_size(m), "doc": m.model_dump(mode="json"), "updated_at": _now(),
    }  # fmt: skip


def _profile_values(p: ProfileDoc) -> dict[str, Any]:
    return {
        "id": p.id, "owner_id": p.owner_id, "name": p.name, "type": p.type, "description": p.description,
        "model_name": p.model_name, "parameters": p.parameters, "system_prompt": p.system_prompt,
        "circuit_breaker": p.circuit_breaker, "gpu_config": p.gpu_config, "updated_at": _now(),
    }  # fmt: skip


def _upsert(table: Any, values: dict[str, Any], key: str, keep: tuple[str, ...] = ()) -> Any:
    stmt = insert(table).values(**values)
    update = {k: stmt.excluded[k] for k in values if k != key and k not in keep}
    return stmt.on_conflict_do_update(index_elements=[key], set_=update)


class CatalogStore:
    def __init__(self, database: Database):
        self.database = database

    # --- reads ---------------------------------------------------------------------------------------------------

    async def load_view(self, session: AsyncSession) -> CatalogView:
        """Every row the resolver needs, as one in-memory view."""
        view = CatalogView()
        for row in (await session.execute(sa.select(ModelRow))).scalars():
            view.models[row.id] = ModelDoc.model_validate(row.doc)
        for p in (await session.execute(sa.select(ProfileRow))).scalars():
            view.profiles[p.id] = profile_doc(p)
        for s in (await session.execute(sa.select(ProfileSetRow))).scalars():
            view.sets[s.name] = ProfileSetDoc.model_validate({"name": s.name, "models": s.models})
        for u in (await session.execute(sa.select(UserRow))).scalars():
            chosen = {k: uuid.UUID(str(v)) for k, v in u.profiles.items()}
            view.users[u.id] = UserRecord(u.id, u.display_name, chosen, dict(u.overrides))
        for r in (await session.execute(sa.select(PerformanceProfileRow))).scalars():
            view.presets[r.name] = dict(r.doc)
        view.default_model = await self.get_meta(session, "default_model")
        return view.index()

    async def get_meta(self, session: AsyncSession, key: str) -> Any:
        row = await session.get(MetaRow, key)
        return row.value if row else None

    async def find_token(self, session: AsyncSession, token: str) -> TokenRecord | None:
        """By the secret (its digest); read from PostgreSQL every time, so no replica can serve a revoked one."""
        row = await session.get(TokenRow, token_digest(token))
        return token_record(row) if row else None

    async def token_by_id(self, session: AsyncSession, token_id: uuid.UUID) -> TokenRecord | None:
        row = (await session.execute(sa.select(TokenRow).where(TokenRow.id == token_id))).scalar_one_or_none()  # type: ignore[arg-type]
        return token_record(row) if row else None

    async def user_tokens(self, session: AsyncSession, user_id: str) -> list[TokenRecord]:
        stmt = sa.select(TokenRow).where(TokenRow.user_id == user_id).order_by(TokenRow.created_at, TokenRow.id)  # type: ignore[arg-type]
        return [token_record(row) for row in (await session.execute(stmt)).scalars()]

    async def model_ids(self, session: AsyncSession) -> set[str]:
        return set((await session.execute(sa.select(ModelRow.id))).scalars())  # type: ignore[call-overload]

    # --- writes (inside the caller's transaction) ------------------------------------------------------------------

    async def set_meta(self, session: AsyncSession, key: str, value: Any) -> None:
        await session.execute(_upsert(MetaRow, {"key": key, "value": value}, "key"))

    async def save_model(self, session: AsyncSession, model: ModelDoc) -> None:
        await session.execute(_upsert(ModelRow, _model_values(model), "id"))

    async def save_profile(self, session: AsyncSession, profile: ProfileDoc) -> None:
        await session.execute(_upsert(ProfileRow, _profile_values(profile), "id"))

    async def insert_profile_if_missing(self, session: AsyncSession, profile: ProfileDoc) -> bool:
        stmt = insert(ProfileRow).values(**_profile_values(profile)).on_conflict_do_nothing()
        return bool((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]

    async def delete_profile(self, session: AsyncSession, profile_id: uuid.UUID) -> bool:
        stmt = sa.delete(ProfileRow).where(ProfileRow.id == profile_id)  # type: ignore[arg-type]
        return bool((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]

    async def save_set(self, session: AsyncSession, profile_set: ProfileSetDoc, source: str) -> None:
        models = {k: v.model_dump(mode="json") for k, v in profile_set.models.items()}
        values = {"name": profile_set.name, "models": models, "source": source, "updated_at": _now()}
        await session.execute(_upsert(ProfileSetRow, values, "name"))

    async def insert_set_if_missing(self, session: AsyncSession, profile_set: ProfileSetDoc) -> None:
        models = {k: v.model_dump(mode="json") for k, v in profile_set.models.items()}
        stmt = insert(ProfileSetRow).values(name=profile_set.name, models=models, source="library")
        await session.execute(stmt.on_conflict_do_nothing())

    async def save_preset(self, session: AsyncSession, name: str, doc: dict[str, Any]) -> None:
        await session.execute(_upsert(PerformanceProfileRow, {"name": name, "doc": doc}, "name"))

    async def save_user(self, session: AsyncSession, user: UserRecord) -> None:
        values = {
            "id": user.user_id, "display_name": user.display_name,
            "profiles": {k: str(v) for k, v in user.profiles.items()}, "overrides": user.overrides,
        }  # fmt: skip
        await session.execute(_upsert(UserRow, values, "id"))

    async def add_token(self, session: AsyncSession, record: TokenRecord, token: str) -> None:
        values = {
            "token_sha256": token_digest(token), "id": record.token_id, "user_id": record.user_id,
            "created_at": record.created_at, "expires_at": record.expires_at,
        }  # fmt: skip
        await session.execute(insert(TokenRow).values(**values))

    async def revoke_token(self, session: AsyncSession, token_id: uuid.UUID, at: datetime) -> None:
        """Sets revoked_at once; a second revoke keeps the first time."""
        where = sa.and_(TokenRow.id == token_id, TokenRow.revoked_at.is_(None))  # type: ignore[arg-type,union-attr]
        await session.execute(sa.update(TokenRow).where(where).values(revoked_at=at))

    async def touch_token(self, session: AsyncSession, token_id: uuid.UUID, at: datetime) -> None:
        await session.execute(sa.update(TokenRow).where(TokenRow.id == token_id).values(last_used_at=at))  # type: ignore[arg-type]


def token_record(row: TokenRow) -> TokenRecord:
    return TokenRecord(
        token_id=row.id, user_id=row.user_id, created_at=row.created_at, expires_at=row.expires_at,
        last_used_at=row.last_used_at, revoked_at=row.revoked_at,
    )  # fmt: skip


def profile_doc(p: ProfileRow) -> ProfileDoc:
    return ProfileDoc(
        id=p.id, owner_id=p.owner_id, name=p.name, type=p.type, type_name=PROFILE_TYPES[p.type],
        description=p.description, model_name=p.model_name, parameters=dict(p.parameters),
        system_prompt=p.system_prompt, circuit_breaker=p.circuit_breaker, gpu_config=p.gpu_config,
        system_default=p.id in SYSTEM_DEFAULT_IDS,
    )  # fmt: skip
