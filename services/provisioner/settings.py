"""Settings of the provisioner service (env prefix MODELFLEET_PROVISIONER_)."""

from pydantic_settings import SettingsConfigDict

from services.runtime.settings import RuntimeSettings


class ProvisionerSettings(RuntimeSettings):
    model_config = SettingsConfigDict(env_prefix="MODELFLEET_PROVISIONER_", extra="ignore", frozen=True)
