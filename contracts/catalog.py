"""Catalog contracts: resolve a role / profile / model name into a model reference and parameters."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import Field, StringConstraints, model_validator

from contracts.envelope import Contract, Envelope

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class ResolveRequest(Contract):
    """Exactly one of role, profile_id, model; `user_id` selects that user's overrides."""

    SUBJECT = "rpc.catalog.resolve.v1"

    role: Name | None = None
    profile_id: uuid.UUID | None = None
    model: Name | None = None
    user_id: Name | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="Request options, highest precedence.")

    @model_validator(mode="after")
    def _one_target(self) -> ResolveRequest:
        given = [n for n in ("role", "profile_id", "model") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of role, profile_id, model (got {given or 'none'})")
        return self


class ResolveReply(Contract):
    model_ref: Name
    provider: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    profile_id: uuid.UUID | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    system_prompt: str = ""
    fallback_chain: list[Name] = Field(default_factory=list)


class ProfileChanged(Envelope):
    SUBJECT = "evt.catalog.profile.changed.v1"

    profile_id: uuid.UUID
    change: Annotated[str, StringConstraints(pattern=r"^(created|updated|deleted)$")]
    owner_id: Name | None = None


class ModelRegistered(Envelope):
    SUBJECT = "evt.catalog.model.registered.v1"

    model_id: Name
    display_name: Name
    source: Annotated[str, StringConstraints(pattern=r"^(curated|imported|custom)$")] = "curated"


class RolesRequest(Contract):
    """Which roles the active profile set (or the named one) defines, each with its model entry."""

    SUBJECT = "rpc.catalog.roles.v1"

    profile_set: Name | None = None


class RoleEntry(Contract):
    role: Name
    model_ref: Name
    provider: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    auto_download: bool = True
    parameters: dict[str, Any] = Field(default_factory=dict)


class RolesReply(Contract):
    profile_set: Name
    roles: list[RoleEntry] = Field(default_factory=list)
