"""Settings of the catalog service (env prefix MODELFLEET_CATALOG_)."""

from pydantic_settings import SettingsConfigDict

from services.runtime.settings import RuntimeSettings


class CatalogSettings(RuntimeSettings):
    model_config = SettingsConfigDict(env_prefix="MODELFLEET_CATALOG_", extra="ignore", frozen=True)
