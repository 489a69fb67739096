"""Provisioner tables (schema `provisioner`) and their async repository."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import Field, SQLModel

from services.runtime.db import Database

SCHEMA = "provisioner"


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
    received_at: datetime = Field(default_factory=lambda: datetime.now(UTC), sa_type=sa.DateTime(timezone=True))


class ProvisionerStore:
    def __init__(self, database: Database):
        self.database = database

    async def record_request(self, session: object, row: ProvisionRequestRow) -> bool:
        """Insert the request; False if this event_id was already recorded (a redelivery)."""
        stmt = insert(ProvisionRequestRow).values(**row.model_dump()).on_conflict_do_nothing()
        result = await session.execute(stmt)  # type: ignore[attr-defined]
        return bool(result.rowcount)
