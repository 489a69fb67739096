"""Provisioner contracts: the durable provision command and the facts of its progress."""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import Field, StringConstraints

from contracts.envelope import Envelope

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class ProvisionCommand(Envelope):
    """The design card's provision.requested: ensure these roles/models are installed on these hosts."""

    SUBJECT = "cmd.provisioner.provision.v1"

    request_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    roles: list[Name] = Field(default_factory=list, max_length=256)
    models: list[Name] = Field(default_factory=list, max_length=256)
    hosts: list[Name] = Field(default_factory=list, max_length=1024)
    force: bool = False
    requested_by: Name | None = None


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
    reason: Annotated[str, StringConstraints(min_length=1, max_length=8000)]
