"""Settings of the hardware-probe daemon (env prefix MODELFLEET_PROBE_)."""

import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from services.hardware_probe.local_models import model_dirs_from
from services.runtime.settings import RuntimeSettings

OPENAI_BACKENDS_ENV = "MODELFLEET_OPENAI_BACKENDS"
MODEL_DIRS_ENV = "MODELFLEET_MODEL_DIRS"


def default_models_dir() -> Path:
    return Path.home() / ".ollama" / "models"


def openai_base_urls(value: str | list[str]) -> list[str]:
    """Comma-separated (or listed) base URLs of OpenAI-compatible servers, each `http(s)://host[:port][/path]/v1`;
    a trailing slash is dropped and a repeat ignored. A bad entry is a ValueError naming it and its position."""
    items = value.split(",") if isinstance(value, str) else list(value)
    urls: list[str] = []
    for position, raw in enumerate(items, start=1):
        entry = str(raw).strip()
        if not entry:
            continue
        problem = _base_url_problem(entry)
        if problem:
            raise ValueError(
                f"{OPENAI_BACKENDS_ENV}: entry {position} {entry!r} {problem} "
                "(expected a base URL ending in /v1, e.g. http://127.0.0.1:8080/v1)"
            )
        url = entry.rstrip("/")
        if url not in urls:
            urls.append(url)
    return urls


def _base_url_problem(entry: str) -> str | None:
    try:
        parts = urlsplit(entry)
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "names no host"
    if parts.query or parts.fragment or parts.username or parts.password:
        return "must have no query, fragment or credentials"
    if not parts.path.rstrip("/").endswith("/v1"):
        return "must end in /v1"
    return None


class HardwareProbeSettings(RuntimeSettings):
    model_config = SettingsConfigDict(env_prefix="MODELFLEET_PROBE_", extra="ignore", frozen=True)

    interval_s: float = Field(default=5.0, gt=0, le=3600, description="Seconds between samples.")
    ollama_url: str = Field(
        default="http://127.0.0.1:11434", validation_alias=AliasChoices("MODELFLEET_OLLAMA_URL", "ollama_url")
    )
    ollama_timeout_s: float = Field(default=2.0, gt=0, le=60, description="Timeout of each Ollama status call.")
    # NoDecode: the environment value is a comma-separated list, not the JSON pydantic-settings expects for a list.
    openai_backends: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices(OPENAI_BACKENDS_ENV, "openai_backends"),
        description="OpenAI-compatible servers on this host (llama.cpp llama-server, vLLM, SGLang, LM Studio): "
        "comma-separated base URLs ending in /v1; each sample lists what their GET <base>/models answers.",
    )
    openai_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="Timeout of each OpenAI-compatible server's /models call."
    )
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
    # NoDecode: a PATH-like list (os.pathsep), not JSON.
    model_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices(MODEL_DIRS_ENV, "model_dirs"),
        description="Directories searched (recursively) for .gguf and .bin files, separated by os.pathsep like PATH; "
        "each file becomes a `local:` model of this host in the catalog (docs/hardware.md, 'Local models').",
    )
    local_models_report_s: float = Field(
        default=60.0, gt=0, le=86400, description="Longest gap between two reports of the local model files."
    )

    @field_validator("model_dirs", mode="before")
    @classmethod
    def _model_dirs(cls, value: Any) -> list[Path]:
        if isinstance(value, str):
            return model_dirs_from(value)
        if isinstance(value, list | tuple):
            return model_dirs_from(os.pathsep.join(str(v) for v in value))
        raise ValueError(f"{MODEL_DIRS_ENV}: expected directories separated by {os.pathsep!r}, got {value!r}")

    @field_validator("openai_backends", mode="before")
    @classmethod
    def _openai_backends(cls, value: Any) -> list[str]:
        if not isinstance(value, str | list | tuple):
            raise ValueError(f"{OPENAI_BACKENDS_ENV}: expected comma-separated base URLs, got {value!r}")
        return openai_base_urls(value if isinstance(value, str) else list(value))
