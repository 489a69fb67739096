"""What one (role or model, host) comes to: the target, the action result, the inventory row, and the translation of
backend and hub errors into a failure that names its channel."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from huggingface_hub.errors import HfHubHTTPError

from contracts.model_ref import ModelRef, ModelRefError, Provision, parse_model_ref
from contracts.provisioner import ProvisionActionResult
from services.provisioner import domain
from services.provisioner.hub import VerificationFailed
from services.provisioner.ollama_backend import BackendError
from services.provisioner.store import InventoryRow

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    role: str | None
    model: str
    provider: str = "ollama"
    auto_download: bool = True
    #: The request was delivered before and did not complete: a model its host holds now that the inventory lacks is
    #: most likely that earlier delivery's work, finished while its record could not be written (PostgreSQL away).
    resumed: bool = False


class Failure(RuntimeError):
    def __init__(self, reason: str, channel: str | None = None, status: int | None = None):
        super().__init__(reason)
        self.channel = channel
        self.status = status


def kind_of(model: str) -> Provision | None:
    """How `model` is provisioned, or None where it cannot be (each host then reports why)."""
    try:
        return parse_model_ref(model).provision
    except ModelRefError:
        return None


def inventory_row(
    host: str, ref: ModelRef, ollama_name: str | None, size: int | None, sha256: str | None, revision: str | None
) -> InventoryRow:
    assert ref.source is not None  # only a reference the provisioner fetched gets a row
    return InventoryRow(
        host=host,
        model_id=ref.canonical,
        display_name=ollama_name or ref.canonical,
        repo_id=ref.repo,
        quantization=ref.quant,
        size_bytes=size,
        sha256=sha256,
        revision=revision,
        ollama_name=ollama_name,
        source=ref.source,
        tags=[],
    )


def action(
    t: Target,
    host: str,
    action: str,
    reason: str | None = None,
    *,
    ollama_name: str | None = None,
    size: int | None = None,
    sha256: str | None = None,
    revision: str | None = None,
) -> ProvisionActionResult:
    return ProvisionActionResult(
        role=t.role,
        model=t.model,
        target_host=host,
        action=action,
        reason=reason,
        ollama_name=ollama_name,
        size_bytes=size,
        sha256=sha256,
        revision=revision,
    )


async def backend_call(coro: Awaitable[T]) -> T:
    try:
        return await coro
    except BackendError as exc:
        raise Failure(str(exc), exc.channel, exc.status) from exc


async def hub_call(coro: Awaitable[T]) -> T:
    try:
        return await coro
    except VerificationFailed as exc:
        raise Failure(str(exc), "verify") from exc
    except domain.BadReference as exc:
        raise Failure(str(exc), "hub") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        raise Failure(f"hub {type(exc).__name__}: {str(exc).splitlines()[0]}", "hub", status) from exc
    except OSError as exc:
        raise Failure(f"download failed: {type(exc).__name__}: {exc}", "connection") from exc
