"""Provisioner tables (schema `provisioner`): requests, inventory, audit log, service state; and the repository."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel

from services.runtime.db import Database

SCHEMA = "provisioner"
#: State rows: the update check's last run (time, counts, errors) and the registry digests it last saw per Ollama name.
UPDATE_CHECK_STATE = "update_check"
REGISTRY_DIGESTS_STATE = "registry_digests"


def _now() -> datetime:
    return datetime.now(UTC)


class ProvisionRequestRow(SQLModel, table=True):
    """One provision command, keyed by its event_id so a redelivery is recognised."""

    __tablename__ = "requests"
    __table_args__ = {"schema": SCHEMA}

    event_id: uuid.UUID = Field(primary_key=True)
    request_id: uuid.UUID = Field(index=True)
    roles: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    models: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    hosts: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    force: bool = False
    requested_by: str | None = None
    received_at: datetime = Field(default_factory=_now, sa_type=sa.DateTime(timezone=True))
    result: list[dict[str, Any]] | None = Field(default=None, sa_type=sa.JSON)
    completed_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class InventoryRow(SQLModel, table=True):
    __tablename__ = "inventory"
    __table_args__ = (sa.UniqueConstraint("host", "model_id", name="inventory_host_model"), {"schema": SCHEMA})

    id: int | None = Field(default=None, primary_key=True, sa_type=sa.BigInteger)
    host: str
    model_id: str
    display_name: str
    repo_id: str | None = None
    file_name: str | None = None
    quantization: str | None = None
    parameter_count: int | None = Field(default=None, sa_type=sa.BigInteger)
    context_window: int | None = Field(default=None, sa_type=sa.BigInteger)
    size_bytes: int | None = Field(default=None, sa_type=sa.BigInteger)
    sha256: str | None = None
    revision: str | None = None
    ollama_name: str | None = None
    source: str
    tags: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    installed_at: datetime = Field(default_factory=_now, sa_type=sa.DateTime(timezone=True))
    last_used: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class AuditRow(SQLModel, table=True):
    """Who did what to which model, at which revision and sha256, with what result, when."""

    __tablename__ = "audit"
    __table_args__ = {"schema": SCHEMA}

    id: int | None = Field(default=None, primary_key=True, sa_type=sa.BigInteger)
    at: datetime = Field(default_factory=_now, sa_type=sa.DateTime(timezone=True))
    actor: str
    action: str
    host: str
    model: str
    request_id: uuid.UUID | None = None
    revision: str | None = None
    sha256: str | None = None
    result: str
    detail: str | None = None


class StateRow(SQLModel, table=True):
    __tablename__ = "state"
    __table_args__ = {"schema": SCHEMA}

    key: str = Field(primary_key=True)
    value: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    updated_at: datetime = Field(default_factory=_now, sa_type=sa.DateTime(timezone=True))


_INVENTORY_FIELDS = [c for c in InventoryRow.model_fields if c != "id"]


class ProvisionerStore:
    def __init__(self, database: Database):
        self.database = database

    async def record_request(self, session: AsyncSession, row: ProvisionRequestRow) -> bool:
        """Insert the request; False if this event_id was already recorded (a redelivery)."""
        values = row.model_dump(exclude={"result", "completed_at"})
        result = await session.execute(insert(ProvisionRequestRow).values(**values).on_conflict_do_nothing())
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def request(self, session: AsyncSession, event_id: uuid.UUID) -> ProvisionRequestRow | None:
        return await session.get(ProvisionRequestRow, event_id)

    async def result_by_request_id(self, request_id: uuid.UUID) -> ProvisionRequestRow | None:
        async with self.database.transaction() as session:
            stmt = sa.select(ProvisionRequestRow).where(ProvisionRequestRow.request_id == request_id)  # type: ignore[arg-type]
            return (await session.execute(stmt)).scalars().first()

    async def complete(self, session: AsyncSession, event_id: uuid.UUID, actions: list[dict[str, Any]]) -> None:
        """One UPDATE (no read of the row first: a request's hot path pays each round trip)."""
        await session.execute(
            sa.update(ProvisionRequestRow)
            .where(ProvisionRequestRow.event_id == event_id)  # type: ignore[arg-type]
            .values(result=actions, completed_at=_now())
        )

    async def upsert_inventory(self, session: AsyncSession, row: InventoryRow) -> None:
        values = row.model_dump(include=set(_INVENTORY_FIELDS))
        stmt = insert(InventoryRow).values(**values)
        updates = {k: stmt.excluded[k] for k in _INVENTORY_FIELDS if k not in ("host", "model_id", "installed_at")}
        await session.execute(stmt.on_conflict_do_update(constraint="inventory_host_model", set_=updates))

    async def insert_inventory(self, session: AsyncSession, row: InventoryRow) -> bool:
        """Insert the row unless (host, model_id) has one already; True if this call inserted it."""
        values = row.model_dump(include=set(_INVENTORY_FIELDS))
        stmt = insert(InventoryRow).values(**values).on_conflict_do_nothing(constraint="inventory_host_model")
        return bool((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]

    async def inventory(self, host: str | None = None) -> list[InventoryRow]:
        async with self.database.transaction() as session:
            stmt = sa.select(InventoryRow).order_by(InventoryRow.host, InventoryRow.model_id)
            if host is not None:
                stmt = stmt.where(InventoryRow.host == host)  # type: ignore[arg-type]
            return list((await session.execute(stmt)).scalars().all())

    async def find(self, host: str, model_id: str) -> InventoryRow | None:
        async with self.database.transaction() as session:
            return await self._find(session, host, model_id)

    async def _find(self, session: AsyncSession, host: str, model_id: str) -> InventoryRow | None:
        stmt = sa.select(InventoryRow).where(
            InventoryRow.host == host,  # type: ignore[arg-type]
            sa.or_(InventoryRow.model_id == model_id, InventoryRow.ollama_name == model_id),  # type: ignore[arg-type]
        )
        return (await session.execute(stmt)).scalars().first()

    async def duplicate_of(self, session: AsyncSession, host: str, sha256: str, model_id: str) -> InventoryRow | None:
        """Another entry on `host` holding the same bytes."""
        stmt = sa.select(InventoryRow).where(
            InventoryRow.host == host,  # type: ignore[arg-type]
            InventoryRow.sha256 == sha256,  # type: ignore[arg-type]
            InventoryRow.model_id != model_id,  # type: ignore[arg-type]
        )
        return (await session.execute(stmt)).scalars().first()

    async def delete_inventory(self, session: AsyncSession, host: str, model_id: str) -> bool:
        row = await self._find(session, host, model_id)
        if row is None:
            return False
        await session.delete(row)
        return True

    async def touch(self, session: AsyncSession, host: str, ollama_names: set[str]) -> None:
        if ollama_names:
            await session.execute(
                sa.update(InventoryRow)
                .where(InventoryRow.host == host, InventoryRow.ollama_name.in_(ollama_names))  # type: ignore[arg-type, union-attr]
                .values(last_used=_now())
            )

    def audit(self, session: AsyncSession, **fields: Any) -> None:
        session.add(AuditRow(**fields))

    async def audits(self) -> list[AuditRow]:
        async with self.database.transaction() as session:
            return list((await session.execute(sa.select(AuditRow).order_by(AuditRow.id))).scalars().all())  # type: ignore[arg-type]

    async def audit_trail(
        self, *, request_id: uuid.UUID | None = None, host: str | None = None, model: str | None = None,
        since: datetime | None = None, limit: int = 100,
    ) -> list[AuditRow]:  # fmt: skip
        """Audit rows matching every filter given, newest first, at most `limit`."""
        stmt = sa.select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)  # type: ignore[union-attr]
        if request_id is not None:
            stmt = stmt.where(AuditRow.request_id == request_id)  # type: ignore[arg-type]
        if host is not None:
            stmt = stmt.where(AuditRow.host == host)  # type: ignore[arg-type]
        if model is not None:
            stmt = stmt.where(AuditRow.model == model)  # type: ignore[arg-type]
        if since is not None:
            stmt = stmt.where(AuditRow.at >= since)  # type: ignore[arg-type]
        async with self.database.transaction() as session:
            return list((await session.execute(stmt)).scalars().all())

    async def get_state(self, key: str) -> dict[str, Any] | None:
        async with self.database.transaction() as session:
            row = await session.get(StateRow, key)
            return dict(row.value) if row is not None else None

    async def put_state(self, key: str, value: dict[str, Any]) -> None:
        async with self.database.transaction() as session:
            stmt = insert(StateRow).values(key=key, value=value, updated_at=_now())
            await session.execute(
                stmt.on_conflict_do_update(index_elements=["key"], set_={"value": value, "updated_at": _now()})
            )
