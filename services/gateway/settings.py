"""Settings of the gateway (env prefix MODELFLEET_GATEWAY_)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.runtime.settings import RuntimeSettings


class GatewaySettings(RuntimeSettings):
    model_config = SettingsConfigDict(env_prefix="MODELFLEET_GATEWAY_", extra="ignore", frozen=True)

    bind: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8080, ge=1, le=65535)
    keep_alive_s: int = Field(
        default=75, ge=1, le=3600, description="How long an idle client connection stays open. Longer than the idle "
        "expiry of common HTTP clients (httpx and so the `openai` client: 5 s), so that the client, not the gateway, "
        "closes it: a gateway closing it as the client reuses it fails that request (uvicorn's own default is 5 s).",
    )  # fmt: skip
    health_timeout_s: float = Field(default=1.5, gt=0, le=30, description="How long a service may stay silent.")
    request_timeout_s: float = Field(default=10.0, gt=0, le=600, description="Timeout of a bus request.")
    route_reuse_max_s: float = Field(
        default=1.0, ge=0, le=60, description="The longest a route reply the router offers for reuse is reused "
        "(the router's `route_reuse_ms` is shorter by default); 0: every request asks the router.",
    )  # fmt: skip
    backend_connect_timeout_s: float = Field(default=2.0, gt=0, le=10, description="Connecting to a backend.")
    outbound_connect_timeout_s: float = Field(
        default=10.0, gt=0, le=10, description="Connecting to a caller's `gguf_url` (else 503 naming its host)."
    )
    outbound_read_timeout_s: float = Field(
        default=30.0, gt=0, le=30, description="Longest silence of a caller's `gguf_url` (else 504 naming its host)."
    )
    backend_read_timeout_s: float = Field(
        default=300.0, gt=0, le=3600, description="Longest silence of a backend between two bytes of its answer."
    )
    fallback_timeout_s: float = Field(
        default=120.0, gt=0, le=3600,
        description="The fallback's first token may wait for its slot to load (a cold GGUF: ~25 s on 2 CPU cores); "
        "also the longest silence between two of its chunks.",
    )  # fmt: skip
    backend_max_connections: int = Field(default=512, ge=1, description="Open connections to backends, all told.")
    backend_keep_alive_s: float = Field(
        default=4.0, gt=0, le=3600, description="How long an idle connection to a backend is reused: less than the "
        "backends' own idle close (uvicorn-based servers and llama.cpp's: 5 s), so no request goes out on a connection "
        "the backend is closing.",
    )  # fmt: skip
    provision_wait_s: float = Field(
        default=60.0, ge=0, le=3600, description="How long a request waits for an auto_download role's model to be "
        "pulled (the router's own bound applies too); the route ask's timeout grows by as much.",
    )  # fmt: skip
    wait_max_s: float = Field(
        default=86400.0, ge=1, le=86400, description="The longest a provision or import with `wait: true` holds its "
        "HTTP request (a longer `timeout_s` is cut to it): past it, 202 with where to follow the request.",
    )  # fmt: skip
    report_window_s: float = Field(
        default=0.05, ge=0, le=1, description="How long a successful call's report waits for the calls that end after "
        "it, to go out in one message (a failure's goes out at once); 0: none waits (what is queued goes together).",
    )  # fmt: skip
    auth_cache_s: float = Field(
        default=30.0, ge=0, le=300, description="How long a user token the catalog accepted is taken without asking "
        "again (never past the token's expiry; all dropped on any catalog change, a revocation included, and when "
        "the NATS connection drops); 0: every request asks the catalog.",
    )  # fmt: skip
    busy_retry_after_s: int = Field(
        default=1, ge=1, le=3600, description="`Retry-After` of a 429 when every backend is at its concurrency limit."
    )
