"""Settings of the catalog service (env prefix MODELFLEET_CATALOG_)."""

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from contracts.parameters import validate_parameters
from services.catalog.library import LIBRARY_FILE
from services.runtime.settings import RuntimeSettings


class CatalogSettings(RuntimeSettings):
    model_config = SettingsConfigDict(env_prefix="MODELFLEET_CATALOG_", extra="ignore", frozen=True)

    profile: str = Field(
        default="default",
        min_length=1,
        validation_alias=AliasChoices("MODELFLEET_PROFILE", "LLM_MODELS_PROFILE", "profile"),
        description="The active profile set (MODELFLEET_PROFILE, also read as LLM_MODELS_PROFILE).",
    )
    global_parameters: dict[str, Any] = Field(
        default_factory=dict, description='Lowest-precedence generation parameters, as JSON (e.g. {"num_ctx": 8192}).'
    )
    library_path: Path = Field(default=LIBRARY_FILE, description="The curated library file applied at every start.")
    ready_timeout_s: float = Field(default=10.0, gt=0, description="How long a request waits for the first load.")
    token_touch_interval_s: float = Field(
        default=60.0, ge=0, description="A token's last_used_at is written at most this often (0: on every use)."
    )

    local_models_replay_s: float = Field(
        default=900.0, gt=0, description="At start, the hosts' local model reports of this many seconds are read."
    )

    @field_validator("global_parameters")
    @classmethod
    def _valid_parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        return validate_parameters(value, "MODELFLEET_CATALOG_GLOBAL_PARAMETERS")
