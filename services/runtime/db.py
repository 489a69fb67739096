"""PostgreSQL for a service: async engine over asyncpg, its own schema, Alembic migrations at start, health."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import StrEnum
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

log = logging.getLogger(__name__)

_ALEMBIC_DIR = Path(__file__).with_name("alembic")


class DbState(StrEnum):
    STARTING = "starting"
    UP = "up"
    DOWN = "down"


def async_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` URLs as operators write them; the engine needs asyncpg."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"MODELFLEET_DATABASE_URL must be a postgresql:// URL, got {url.split('://', 1)[0]}://...")


class Database:
    """One service's database: `schema` holds its tables, `migrations` its Alembic revisions."""

    def __init__(
        self, url: str, schema: str, migrations: Path, *, retry_initial_s: float = 0.2, retry_max_s: float = 5.0
    ):
        self.schema = schema
        self.migrations = migrations
        self.engine: AsyncEngine = create_async_engine(async_url(url), pool_pre_ping=True, pool_size=5, max_overflow=5)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.state = DbState.STARTING
        self.last_error = ""
        self.migrated = asyncio.Event()
        self._retry = (retry_initial_s, retry_max_s)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on any error."""
        async with self.sessions() as session, session.begin():
            yield session

    async def migrate(self) -> None:
        """Create the schema and apply every revision; replicas serialise on an advisory lock."""
        async with self.engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": f"modelfleet:{self.schema}"})
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
            await conn.run_sync(self._upgrade)

    def _upgrade(self, connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(_ALEMBIC_DIR))
        config.set_main_option("path_separator", "os")
        config.set_main_option("version_locations", str(self.migrations))
        config.attributes["connection"] = connection
        config.attributes["schema"] = self.schema
        command.upgrade(config, "heads")

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def watch(self, interval_s: float = 2.0) -> None:
        """Run for the life of the service: migrate (retrying with backoff), then keep `state` current."""
        delay, cap = self._retry
        while not self.migrated.is_set():
            try:
                await self.migrate()
                self.migrated.set()
                self.state = DbState.UP
                log.info("database schema %s is up to date", self.schema)
            except Exception as exc:  # any fault here is transient from the service's point of view
                self._down(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, cap)
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.ping()
                if self.state is not DbState.UP:
                    log.info("database connection restored")
                self.state = DbState.UP
            except Exception as exc:
                self._down(exc)

    def _down(self, exc: Exception) -> None:
        if self.state is not DbState.DOWN:
            log.warning("database unavailable: %s", exc)
        self.state = DbState.DOWN
        self.last_error = f"{type(exc).__name__}: {exc}"[:500]

    async def close(self) -> None:
        await self.engine.dispose()
