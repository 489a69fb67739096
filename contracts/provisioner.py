"""Provisioner contracts: the durable provision command, the facts of its progress, inventory and HF listing RPCs."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from contracts.envelope import Contract, Envelope
from contracts.rpc import RpcRequest

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=8000)]
#: A content digest as registries write it.
Digest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]

#: What provisioning did for one (role or model, host).
Action = Literal["present", "pulled", "imported", "skipped", "failed"]
#: Where an inventory entry came from.
Source = Literal["curated", "custom_hf", "pinned_hf", "local", "discovered"]


class ProvisionCommand(Envelope):
    """The design card's provision.requested: ensure these roles/models are installed on these hosts."""

    SUBJECT = "cmd.provisioner.provision.v1"

    request_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    roles: list[Name] = Field(default_factory=list, max_length=256)
    models: list[Name] = Field(default_factory=list, max_length=256)
    hosts: list[Name] = Field(default_factory=list, max_length=1024)
    force: bool = False
    requested_by: Name | None = None
    allow_unpinned: bool = Field(
        default=False, description="Allow a branch name (e.g. `main`) as the revision of a pinned HF import."
    )


class ProvisionFetch(ProvisionCommand):
    """A provision command for the provisioners of one host (`cmd.provisioner.fetch.<host>.v1`): what it fetches must
    land in THAT host's models directory (the inference fallback's checkpoints). Same payload as ProvisionCommand;
    only the provisioners whose host id fills the subject consume it (one durable per host, `provisioner-<host>`)."""

    SUBJECT = "cmd.provisioner.fetch.{host}.v1"


class ProvisionProgress(Envelope):
    SUBJECT = "evt.provisioner.progress.v1"

    request_id: uuid.UUID
    target_host: Name
    model: Name
    status: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    completed_bytes: int = Field(default=0, ge=0)
    total_bytes: int | None = Field(default=None, ge=0)
    rate_bytes_per_s: float | None = Field(default=None, ge=0)
    eta_s: float | None = Field(default=None, ge=0)


class ModelPulled(Envelope):
    SUBJECT = "evt.provisioner.model.pulled.v1"

    request_id: uuid.UUID
    target_host: Name
    model: Name
    size_bytes: int | None = Field(default=None, ge=0)
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    revision: Name | None = None


class ProvisionFailed(Envelope):
    SUBJECT = "evt.provisioner.failed.v1"

    request_id: uuid.UUID
    target_host: Name
    model: Name
    reason: Reason
    error_channel: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        default=None, description="http (a status code), stream (an error line mid-pull), connection, verify, hub, ..."
    )
    status_code: int | None = Field(default=None, description="The backend's HTTP status; -1 for a mid-stream error.")


class ProvisionActionResult(Contract):
    """What provisioning did for one role (or explicit model) on one host."""

    role: Name | None = None
    model: Name
    target_host: Name
    action: Action
    reason: Reason | None = None
    ollama_name: Name | None = None
    size_bytes: int | None = Field(default=None, ge=0)
    sha256: Sha256 | None = None
    revision: Name | None = None


class ProvisionCompleted(Envelope):
    """Every action of one provision request, published once when all of them are decided."""

    SUBJECT = "evt.provisioner.request.completed.v1"

    request_id: uuid.UUID
    actions: list[ProvisionActionResult] = Field(default_factory=list)


class UpdateAvailable(Envelope):
    """The update check found a newer remote revision (or digest) than the one installed.

    For a pinned HF import the revisions are commits; for an Ollama-library model they are manifest digests
    (`sha256:<hex>`), also given in `installed_digest` / `remote_digest`, and `registry` names where it looked."""

    SUBJECT = "evt.provisioner.update.available.v1"

    target_host: Name
    model: Name
    repo_id: Name | None = None
    installed_revision: Name | None = None
    remote_revision: Name
    source: Source
    installed_digest: Digest | None = None
    remote_digest: Digest | None = None
    registry: Name | None = None


class UpdateFound(Contract):
    """One update a check found: the model on `host` and its installed and remote revision (or digest)."""

    host: Name
    model: Name
    source: Source
    repo_id: Name | None = None
    installed_revision: Name | None = None
    remote_revision: Name
    installed_digest: Digest | None = None
    remote_digest: Digest | None = None
    registry: Name | None = None


class UpdateProblem(Contract):
    """A model a check failed on (`errors`) or does not check (`not_checked`), and why."""

    host: Name
    model: Name
    reason: Reason


class UpdateCheckSummary(Contract):
    """The result of one update check. `skipped`: SKIP_MODEL_DOWNLOADS was set, so nothing was asked upstream."""

    checked_at: datetime
    skipped: bool = False
    checked: int = Field(default=0, ge=0, description="Models compared with their upstream.")
    found: list[UpdateFound] = Field(default_factory=list)
    errors: list[UpdateProblem] = Field(default_factory=list)
    not_checked: list[UpdateProblem] = Field(default_factory=list)


class UpdateCheckRequest(RpcRequest[UpdateCheckSummary]):
    """Run an update check now (or join the one running) and reply with its UpdateCheckSummary."""

    SUBJECT = "rpc.provisioner.updates.check.v1"

    requested_by: Name | None = None


class UpdateStatusReply(Contract):
    """The last check's summary (none before the first) and when the interval check is next due."""

    interval_enabled: bool
    interval_s: float = Field(gt=0)
    running: bool = False
    last: UpdateCheckSummary | None = None
    next_due_at: datetime | None = Field(default=None, description="None when the interval check is disabled.")


class UpdateStatusRequest(RpcRequest[UpdateStatusReply]):
    SUBJECT = "rpc.provisioner.updates.status.v1"


class InventoryEntry(Contract):
    host: Name
    model_id: Name
    display_name: Name
    repo_id: Name | None = None
    file_name: Name | None = None
    quantization: Name | None = None
    parameter_count: int | None = Field(default=None, ge=0)
    context_window: int | None = Field(default=None, ge=0)
    size_bytes: int | None = Field(default=None, ge=0)
    sha256: Sha256 | None = None
    revision: Name | None = None
    ollama_name: Name | None = None
    source: Source
    tags: list[Name] = Field(default_factory=list)
    installed_at: datetime
    last_used: datetime | None = None


class InventoryReply(Contract):
    entries: list[InventoryEntry] = Field(default_factory=list)


class InventoryRequest(RpcRequest[InventoryReply]):
    SUBJECT = "rpc.provisioner.inventory.v1"

    host: Name | None = None


class InventorySyncReply(Contract):
    adopted: list[InventoryEntry] = Field(default_factory=list)
    hosts: list[Name] = Field(default_factory=list)
    errors: list[Reason] = Field(default_factory=list)


class InventorySyncRequest(RpcRequest[InventorySyncReply]):
    """Adopt what is already on the host(s): Ollama's model list and model files under the models directory."""

    SUBJECT = "rpc.provisioner.inventory.sync.v1"

    host: Name | None = None
    requested_by: Name | None = None


class InventoryDeleteReply(Contract):
    host: Name
    model: Name
    removed_from_host: bool
    removed_from_inventory: bool


class InventoryDeleteRequest(RpcRequest[InventoryDeleteReply]):
    SUBJECT = "rpc.provisioner.inventory.delete.v1"

    host: Name
    model: Name
    inventory_only: bool = Field(default=False, description="Forget the entry but leave the model on the host.")
    requested_by: Name | None = None


class Quantization(Contract):
    file_name: Name
    quantization: Name
    size_bytes: int = Field(ge=0)
    sha256: Sha256 | None = None
    estimated_vram_bytes: int = Field(ge=0)
    fit: dict[str, str] = Field(default_factory=dict, description="host id -> perfect | tight | wont_fit | no_gpu")
    # Added with library shapes (optional, so older replies stay valid):
    method: Literal["shape", "file-size"] | None = Field(
        default=None,
        description="shape: the catalog's architecture figures for this repo and the file size (as `fit`); "
        "file-size: the simple form (no figures known)",
    )


class QuantizationsReply(Contract):
    repo_id: Name
    revision: Name
    commit: Name
    quantizations: list[Quantization] = Field(default_factory=list)


class QuantizationsRequest(RpcRequest[QuantizationsReply]):
    SUBJECT = "rpc.provisioner.hf.quantizations.v1"

    repo_id: Name
    revision: Name = "main"
    context_tokens: int = Field(default=4096, ge=0, le=10_000_000)


class ProvisionResultReply(Contract):
    request_id: uuid.UUID
    done: bool
    actions: list[ProvisionActionResult] = Field(default_factory=list)


class ProvisionResultRequest(RpcRequest[ProvisionResultReply]):
    """The stored result of a provision request (for a client that reconnects after it finished)."""

    SUBJECT = "rpc.provisioner.result.v1"

    request_id: uuid.UUID


_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def pinned_hf_ref(repo_id: str, quant: str, revision: str) -> str:
    """The model reference of a pinned GGUF import: `hf.co/{user}/{repo}:{quant}@{revision}`."""
    return f"hf.co/{repo_id}:{quant}@{revision}"


def pinned_ollama_name(repo_id: str, quant: str, revision: str) -> str:
    """The name a pinned import is registered under in Ollama; every service computes it the same way."""
    rev = revision[:12] if re.fullmatch(r"[0-9a-f]{40}", revision) else revision
    return f"hf.co/{repo_id}:{_TAG_UNSAFE.sub('-', f'{quant}-{rev}')}"[:256]


#: The most audit rows one request returns (the default is 100).
AUDIT_LIMIT_MAX = 1000


class AuditEntry(Contract):
    """One audit row: who did what to which model on which host, at which revision and sha256, with what result."""

    id: int = Field(ge=1)
    at: datetime
    actor: Name
    action: Name = Field(description="pull, import, download, provision (a failure), adopt, delete, ...")
    host: Name
    model: Name
    request_id: uuid.UUID | None = Field(default=None, description="The provision request; none for adopt/delete.")
    revision: Name | None = None
    sha256: Sha256 | None = None
    result: Name = Field(description="ok or failed")
    detail: Reason | None = None


class AuditReply(Contract):
    entries: list[AuditEntry] = Field(default_factory=list, description="Newest first.")


class AuditRequest(RpcRequest[AuditReply]):
    """The provisioner's audit trail, newest first, filtered by any of request id, host, model and time."""

    SUBJECT = "rpc.provisioner.audit.v1"

    request_id: uuid.UUID | None = None
    host: Name | None = None
    model: Name | None = None
    since: datetime | None = Field(default=None, description="Rows at or after this instant.")
    limit: int = Field(default=100, ge=1, le=AUDIT_LIMIT_MAX)
