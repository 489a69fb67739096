"""Settings of the hardware-probe daemon (env prefix MODELFLEET_PROBE_)."""

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.runtime.settings import RuntimeSettings


class HardwareProbeSettings(RuntimeSettings):
    model_config = SettingsConfigDict(env_prefix="MODELFLEET_PROBE_", extra="ignore", frozen=True)

    interval_s: float = Field(default=5.0, gt=0, le=3600, description="Seconds between samples.")
    ollama_url: str = Field(
        default="http://127.0.0.1:11434", validation_alias=AliasChoices("MODELFLEET_OLLAMA_URL", "ollama_url")
    )
