"""Settings of the router service (env prefix MODELFLEET_ROUTER_)."""

from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.runtime.settings import RuntimeSettings

StrategyName = Literal["least_busy", "latency", "weighted"]


class RouterSettings(RuntimeSettings):
    model_config = SettingsConfigDict(env_prefix="MODELFLEET_ROUTER_", extra="ignore", frozen=True)

    default_strategy: StrategyName = "least_busy"
    #: role -> strategy, as JSON: MODELFLEET_ROUTER_STRATEGIES='{"coding": "latency", "embedding": "weighted"}'
    strategies: dict[str, StrategyName] = Field(default_factory=dict)
    #: backend base URL or host id -> weight for the `weighted` strategy (1 for any backend not named)
    weights: dict[str, float] = Field(default_factory=dict)
    #: `latency`: backends within this fraction of the fastest EWMA (and at least `latency_tolerance_ms`) tie
    latency_tolerance: float = Field(default=0.25, ge=0)
    latency_tolerance_ms: float = Field(default=10.0, ge=0)
    ewma_alpha: float = Field(default=0.3, gt=0, le=1)
    #: a backend failing this many times within `failure_window_s`, or refusing or answering 429 once, is skipped
    #: for `cooldown_s`
    allowed_fails: int = Field(default=3, ge=1)
    cooldown_s: float = Field(default=5.0, gt=0)
    failure_window_s: float = Field(default=60.0, gt=0)
    #: calls in flight one backend takes, across every gateway: at it, routes skip the backend, and when every usable
    #: backend of a request is at it the route is a 429 `rate_limited`; each gateway also keeps its own calls under it
    max_in_flight: int = Field(default=64, ge=1)
    #: backend base URL or host id -> its own limit, as JSON: MODELFLEET_ROUTER_MAX_IN_FLIGHT_BY_BACKEND='{"gpu-01": 4}'
    max_in_flight_by_backend: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    #: a role whose Ollama model no live backend has and whose entry says auto_download is pulled onto the best host;
    #: its route requests wait this long at most (a RouteRequest's `provision_wait_s` may ask for less)
    provision_wait_s: float = Field(default=60.0, ge=0, le=3600)
    #: route requests one replica works on at once; requests waiting for an on-demand pull count, so this is well
    #: above what deciding needs (a decision takes microseconds)
    route_concurrency: int = Field(default=1024, ge=1)
    #: a gateway's in-flight report counts for this long (a gateway that died stops counting)
    in_flight_ttl_s: float = Field(default=30.0, gt=0)
    #: a host is dead after this many missed heartbeats
    missed_beats: int = Field(default=3, ge=1)
    #: how long a catalog resolution is reused (dropped at once on a catalog change event)
    resolve_cache_ttl_s: float = Field(default=5.0, ge=0)
    resolve_timeout_s: float = Field(default=2.0, gt=0)
    #: how long a gateway may reuse a route reply no other backend competes in (`RouteReply.reuse`, docs/router.md
    #: "Route reuse"); 0: every reply says ask again
    route_reuse_ms: int = Field(default=500, ge=0, le=60_000)
    #: num_ctx for Ollama when neither the parameters nor the catalog's model entry give one
    default_num_ctx: int = Field(default=8192, ge=256)
    #: candidates after the chosen one in a reply's fallback chain
    chain_limit: int = Field(default=4, ge=0, le=64)
    #: how far back a starting replica reads samples, heartbeats and call reports to rebuild its view
    replay_s: float = Field(default=120.0, gt=0)
    #: active checks: every backend each interval (Ollama GET /api/version, OpenAI-compatible GET <base>/models)
    check_interval_s: float = Field(default=2.0, gt=0)
    check_timeout_s: float = Field(default=1.0, gt=0)
    check_concurrency: int = Field(default=64, ge=1)
    #: how often the watched roles (the active profile set's) are asked of the catalog again, besides on changes
    roles_refresh_s: float = Field(default=30.0, gt=0)
