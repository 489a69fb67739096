"""Settings of the inference-fallback service (env prefix MODELFLEET_FALLBACK_; docs/fallback.md has the table)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.inference_fallback.adapters import AdapterSettings
from services.inference_fallback.devices import DeviceSettings
from services.runtime.settings import RuntimeSettings


def default_ollama_models() -> Path:
    return Path.home() / ".ollama" / "models"


class InferenceFallbackSettings(RuntimeSettings, DeviceSettings, AdapterSettings):
    """The slot settings below, plus the device settings (devices.py: dtype, allow_cuda, use_unsloth,
    require_unsloth) and the adapter registry's (adapters.py: adapters_dir, adapters_scan_s)."""

    model_config = SettingsConfigDict(env_prefix="MODELFLEET_FALLBACK_", extra="ignore", frozen=True)

    memory_fraction: float = Field(
        default=0.5, gt=0, le=1, description="Share of the host's RAM (or the GPU's VRAM) the slots may take."
    )
    memory_budget_bytes: int | None = Field(
        default=None, ge=1, description="A fixed budget instead of memory_fraction of what the host has."
    )
    offload_threshold: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Share of the budget past which a new slot evicts idle slots (CPU) or loads offloaded (CUDA).",
    )
    max_seq_length: int = Field(
        default=2048, ge=16, le=1_048_576, description="Prompt + completion tokens a slot takes."
    )
    concurrency_per_slot: int = Field(default=1, ge=1, le=64, description="Generations one slot runs at once.")
    queue_timeout_s: float = Field(
        default=30.0, gt=0, description="How long a request past the limit waits (then 429)."
    )
    idle_expiry_s: float = Field(
        default=300.0, gt=0, description="Idle time after which a slot of a healthy role goes."
    )
    expiry_check_s: float = Field(default=5.0, gt=0, description="How often idle slots are looked at.")
    advertise_interval_s: float = Field(default=5.0, gt=0, description="How often the replica advertises itself.")
    models_dir: Path | None = Field(
        default=None, description="The provisioner's models dir; default <state dir>/models."
    )
    ollama_models: Path = Field(
        default_factory=default_ollama_models,
        validation_alias=AliasChoices("MODELFLEET_FALLBACK_OLLAMA_MODELS", "OLLAMA_MODELS", "ollama_models"),
        description="This host's Ollama store (manifests/, blobs/).",
    )
    catalog_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of rpc.catalog.roles.v1.")
    fetch_timeout_s: float = Field(
        default=1800.0, gt=0, description="How long a request waits for the provisioner to fetch a fallback.repo."
    )
    provisioner_timeout_s: float = Field(
        default=2.0, gt=0, description="How long to wait for a provisioner's health answer before asking it to fetch."
    )

    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.state_dir / "models"
