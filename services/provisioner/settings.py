"""Settings of the provisioner service (env prefix MODELFLEET_PROVISIONER_; HF_ENDPOINT, HF_TOKEN and
SKIP_MODEL_DOWNLOADS keep the names the Hugging Face tools and the original deployment use)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.runtime.settings import RuntimeSettings


class ProvisionerSettings(RuntimeSettings):
    model_config = SettingsConfigDict(env_prefix="MODELFLEET_PROVISIONER_", extra="ignore", frozen=True)

    models_dir: Path | None = Field(default=None, description="Where downloads land; default <state dir>/models.")
    quarantine_dir: Path | None = Field(
        default=None, description="Files that failed verification; default <state dir>/quarantine."
    )
    hf_endpoint: str = Field(
        default="https://huggingface.co",
        validation_alias=AliasChoices("HF_ENDPOINT", "MODELFLEET_PROVISIONER_HF_ENDPOINT", "hf_endpoint"),
    )
    hf_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("HF_TOKEN", "MODELFLEET_PROVISIONER_HF_TOKEN", "hf_token")
    )
    hub_connect_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=10,
        description="A hub API call connects within this long, or answers 503 naming the hub.",
    )
    hub_read_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="The longest silence of the hub's API (then 504 naming the hub)."
    )
    skip_downloads: bool = Field(
        default=False,
        validation_alias=AliasChoices(
            "SKIP_MODEL_DOWNLOADS", "MODELFLEET_PROVISIONER_SKIP_DOWNLOADS", "skip_downloads"
        ),
    )
    ollama_hosts: dict[str, str] = Field(
        default_factory=dict,
        description="Extra hosts (id -> Ollama URL, JSON) for fleets without probes; probes' `hosts` KV entries win.",
    )
    update_check: bool = True
    update_interval_s: float = Field(default=86400.0, gt=0)
    ollama_registry: str = Field(
        default="https://registry.ollama.ai",
        description="The registry the update check asks for Ollama-library manifests (names without a host).",
    )
    registry_timeout_s: float = Field(default=10.0, gt=0)
    command_ack_wait_s: float = Field(default=30.0, gt=0)
    progress_interval_s: float = Field(default=0.5, ge=0.5, description="At most one progress event per this many s.")
    catalog_timeout_s: float = Field(default=3.0, gt=0)
    ollama_timeout_s: float = Field(default=300.0, gt=0)
    max_concurrent: int = Field(default=4, ge=1)

    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.state_dir / "models"

    def resolved_quarantine_dir(self) -> Path:
        return self.quarantine_dir or self.state_dir / "quarantine"
