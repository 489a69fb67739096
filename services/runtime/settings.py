"""Settings every service shares; each service subclasses it with env prefix MODELFLEET_<NAME>_."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, NonNegativeFloat, SecretStr
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

    # Delivery of stream messages (docs/delivery.md); shared by every service, so the names ignore the prefix.
    #: Deliveries of one message to a consumer that retries, before it goes to dlq.<subject>.
    delivery_max_deliver: int = Field(
        default=10, ge=1, le=1000, validation_alias=AliasChoices("MODELFLEET_DELIVERY_MAX_DELIVER")
    )
    #: Seconds before the 2nd, 3rd, ... delivery after a failure; the last value repeats. With the defaults a
    #: message is tried for 1+2+5+10+20+30+60+60+60 = 248 s (plus handler time) before it is dead-lettered.
    delivery_backoff_s: tuple[NonNegativeFloat, ...] = Field(
        default=(1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0),
        validation_alias=AliasChoices("MODELFLEET_DELIVERY_BACKOFF_S"),
    )
    #: Seconds JetStream waits for an ack before delivering again (a consumer may set its own).
    delivery_ack_wait_s: float = Field(
        default=30.0, gt=0, validation_alias=AliasChoices("MODELFLEET_DELIVERY_ACK_WAIT_S")
    )
