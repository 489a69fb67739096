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
    #: Port of this process's Prometheus `/metrics` (docs/observability.md); unset: the service's own default
    #: (`services.runtime.metrics.METRICS_PORTS`: gateway 9464 up to inference-fallback 9469); 0: off.
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, validation_alias=AliasChoices("MODELFLEET_METRICS_PORT")
    )
    #: Address `/metrics` listens on: loopback by default; `0.0.0.0` in a container so Prometheus can scrape it.
    metrics_bind: str = Field(default="127.0.0.1", validation_alias=AliasChoices("MODELFLEET_METRICS_BIND"))
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

    # Retention (docs/foundation.md "Retention") and the fleet-wide single flight (docs/provisioning.md); shared by
    # every service, so the names ignore the prefix. A limit of -1 means none.
    #: EVENTS (`evt.>`): facts older than this are dropped (7 days).
    retention_events_max_age_s: float = Field(
        default=7 * 86400.0, gt=0, validation_alias=AliasChoices("MODELFLEET_RETENTION_EVENTS_MAX_AGE_S")
    )
    #: EVENTS: the oldest facts are dropped beyond this many bytes (1 GiB).
    retention_events_max_bytes: int = Field(
        default=1 << 30, ge=-1, validation_alias=AliasChoices("MODELFLEET_RETENTION_EVENTS_MAX_BYTES")
    )
    #: EVENTS: at most this many messages per subject, so the frequent ones (gpu.sampled) cannot crowd the rare out.
    retention_events_max_msgs_per_subject: int = Field(
        default=100_000, ge=-1, validation_alias=AliasChoices("MODELFLEET_RETENTION_EVENTS_MAX_MSGS_PER_SUBJECT")
    )
    #: COMMANDS (`cmd.>`): commands older than this are dropped, consumed or not (7 days).
    retention_commands_max_age_s: float = Field(
        default=7 * 86400.0, gt=0, validation_alias=AliasChoices("MODELFLEET_RETENTION_COMMANDS_MAX_AGE_S")
    )
    retention_commands_max_bytes: int = Field(
        default=256 << 20, ge=-1, validation_alias=AliasChoices("MODELFLEET_RETENTION_COMMANDS_MAX_BYTES")
    )
    #: DLQ (`dlq.>`): dead letters are kept longer, for an operator to look at (30 days).
    retention_dlq_max_age_s: float = Field(
        default=30 * 86400.0, gt=0, validation_alias=AliasChoices("MODELFLEET_RETENTION_DLQ_MAX_AGE_S")
    )
    retention_dlq_max_bytes: int = Field(
        default=1 << 30, ge=-1, validation_alias=AliasChoices("MODELFLEET_RETENTION_DLQ_MAX_BYTES")
    )
    #: KV `hosts`: a host whose probe has not written for this long drops out of the bucket (7 days).
    retention_hosts_max_age_s: float = Field(
        default=7 * 86400.0, gt=0, validation_alias=AliasChoices("MODELFLEET_RETENTION_HOSTS_MAX_AGE_S")
    )
    retention_hosts_max_bytes: int = Field(
        default=64 << 20, ge=-1, validation_alias=AliasChoices("MODELFLEET_RETENTION_HOSTS_MAX_BYTES")
    )
    #: KV `flights` (download leases; their max age is `flight_lease_ttl_s`).
    retention_flights_max_bytes: int = Field(
        default=16 << 20, ge=-1, validation_alias=AliasChoices("MODELFLEET_RETENTION_FLIGHTS_MAX_BYTES")
    )
    #: Outbox rows published longer ago than this are deleted (1 day); unpublished rows are never deleted.
    retention_outbox_published_s: float = Field(
        default=86400.0, ge=0, validation_alias=AliasChoices("MODELFLEET_RETENTION_OUTBOX_PUBLISHED_S")
    )
    #: Seconds between two prunes of the outbox, and the most rows one delete statement removes.
    retention_outbox_prune_interval_s: float = Field(
        default=60.0, gt=0, validation_alias=AliasChoices("MODELFLEET_RETENTION_OUTBOX_PRUNE_INTERVAL_S")
    )
    retention_outbox_prune_batch: int = Field(
        default=1000, ge=1, validation_alias=AliasChoices("MODELFLEET_RETENTION_OUTBOX_PRUNE_BATCH")
    )
    #: A download lease lapses this many seconds after its holder last renewed it (renewed every third of it).
    flight_lease_ttl_s: float = Field(
        default=15.0, ge=1, validation_alias=AliasChoices("MODELFLEET_FLIGHT_LEASE_TTL_S")
    )
    #: How often a replica waiting on another's download looks at the lease.
    flight_lease_poll_s: float = Field(
        default=0.5, gt=0, validation_alias=AliasChoices("MODELFLEET_FLIGHT_LEASE_POLL_S")
    )
