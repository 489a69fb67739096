"""Settings every service shares; each service subclasses it with env prefix MODELFLEET_<NAME>_."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_state_dir() -> Path:
    return Path.home() / ".local" / "share" / "modelfleet"


class RuntimeSettings(BaseSettings):
    """Connection and identity settings; the shared names ignore the per-service prefix."""

    model_config = SettingsConfigDict(env_prefix="MODELFLEET_", extra="ignore", frozen=True)

    nats_url: str = Field(
        default="nats://127.0.0.1:4222", validation_alias=AliasChoices("MODELFLEET_NATS_URL", "nats_url")
    )
    database_url: str = Field(
        default="postgresql+asyncpg://modelfleet@127.0.0.1:5432/modelfleet",
        validation_alias=AliasChoices("MODELFLEET_DATABASE_URL", "database_url"),
    )
    state_dir: Path = Field(
        default_factory=default_state_dir, validation_alias=AliasChoices("MODELFLEET_STATE_DIR", "state_dir")
    )
    admin_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MODELFLEET_ADMIN_TOKEN", "admin_token")
    )
    host_id: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MODELFLEET_HOST_ID", "host_id"),
        description="This host's id; when unset, a stable id is kept in the state dir.",
    )
    #: Seconds between reconnect / re-check attempts when NATS or PostgreSQL is away (doubles up to the cap).
    retry_initial_s: float = Field(default=0.2, gt=0, validation_alias=AliasChoices("MODELFLEET_RETRY_INITIAL_S"))
    retry_max_s: float = Field(default=5.0, gt=0, validation_alias=AliasChoices("MODELFLEET_RETRY_MAX_S"))
