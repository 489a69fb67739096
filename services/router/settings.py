"""Settings of the router service (env prefix MODELFLEET_ROUTER_)."""

from pydantic_settings import SettingsConfigDict

from services.runtime.settings import RuntimeSettings


class RouterSettings(RuntimeSettings):
    model_config = SettingsConfigDict(env_prefix="MODELFLEET_ROUTER_", extra="ignore", frozen=True)
