"""Settings of the inference-fallback service (env prefix MODELFLEET_FALLBACK_)."""

from pydantic_settings import SettingsConfigDict

from services.runtime.settings import RuntimeSettings


class InferenceFallbackSettings(RuntimeSettings):
    model_config = SettingsConfigDict(env_prefix="MODELFLEET_FALLBACK_", extra="ignore", frozen=True)
