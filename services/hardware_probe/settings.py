"""Settings of the hardware-probe daemon (env prefix MODELFLEET_PROBE_)."""

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.runtime.settings import RuntimeSettings


def default_models_dir() -> Path:
    return Path.home() / ".ollama" / "models"


class HardwareProbeSettings(RuntimeSettings):
    model_config = SettingsConfigDict(env_prefix="MODELFLEET_PROBE_", extra="ignore", frozen=True)

    interval_s: float = Field(default=5.0, gt=0, le=3600, description="Seconds between samples.")
    ollama_url: str = Field(
        default="http://127.0.0.1:11434", validation_alias=AliasChoices("MODELFLEET_OLLAMA_URL", "ollama_url")
    )
    ollama_timeout_s: float = Field(default=2.0, gt=0, le=60, description="Timeout of each Ollama status call.")
    models_dir: Path = Field(
        default_factory=default_models_dir,
        validation_alias=AliasChoices("MODELFLEET_PROBE_MODELS_DIR", "OLLAMA_MODELS", "models_dir"),
        description="Where models are stored; the sample reports the free disk under it.",
    )
    torch: bool = Field(
        default=False,
        description="Report torch's allocated/reserved bytes per device (this process's allocator; importing torch "
        "and touching CUDA costs a CUDA context per device, so it is off unless asked for).",
    )
    history: int = Field(default=5, ge=1, le=64, description="Revisions the hosts KV bucket keeps per host.")
