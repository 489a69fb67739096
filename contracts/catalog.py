"""Catalog contracts: resolve a role / profile / model name into a model reference and parameters."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from contracts.architecture import ModelArchitecture
from contracts.envelope import Contract, Envelope
from contracts.fallback import FallbackSpec
from contracts.rpc import RpcRequest

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
#: A performance profile's name (a `[performance_profiles.<name>]` table of a TOML import).
PerformanceProfileName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
#: The layers of a resolution, lowest precedence first (`contracts.parameters.LAYERS`).
ParameterLayer = Literal["global", "model", "role", "performance_profile", "profile", "user", "request"]


class ParameterSource(Contract):
    """Where a resolved parameter's value came from: the layer, and which one of it (model id, role, performance
    profile name, profile id, user id; none for `global` and `request`)."""

    layer: ParameterLayer
    name: Annotated[str, StringConstraints(max_length=256)] | None = None


class ResolveReply(Contract):
    model_ref: Name
    provider: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    profile_id: uuid.UUID | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    system_prompt: str = ""
    fallback_chain: list[Name] = Field(default_factory=list)
    # Added with performance profiles (optional, so the major version holds):
    performance_profile: PerformanceProfileName | None = Field(
        default=None, description="The performance profile applied (the request's, else the role's default)."
    )
    parameter_sources: dict[str, ParameterSource] = Field(
        default_factory=dict, description="For each parameter, the layer its value came from."
    )


class ResolveRequest(RpcRequest[ResolveReply]):
    """Exactly one of role, profile_id, model; `user_id` selects that user's overrides."""

    SUBJECT = "rpc.catalog.resolve.v1"

    role: Name | None = None
    profile_id: uuid.UUID | None = None
    model: Name | None = None
    user_id: Name | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="Request options, highest precedence.")
    performance_profile: PerformanceProfileName | None = Field(
        default=None, description="A performance profile to apply (replaces the role's default one); 404 if unknown."
    )

    @model_validator(mode="after")
    def _one_target(self) -> ResolveRequest:
        given = [n for n in ("role", "profile_id", "model") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of role, profile_id, model (got {given or 'none'})")
        return self


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


class RoleEntry(Contract):
    role: Name
    model_ref: Name
    provider: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    auto_download: bool = True
    parameters: dict[str, Any] = Field(default_factory=dict)
    fallback: FallbackSpec | None = Field(
        default=None, description="What the inference fallback loads for this role (None: the role's own GGUF)."
    )
    performance_profile: PerformanceProfileName | None = Field(
        default=None, description="The role's default performance profile."
    )


class RolesReply(Contract):
    profile_set: Name
    roles: list[RoleEntry] = Field(default_factory=list)


class RolesRequest(RpcRequest[RolesReply]):
    """Which roles the active profile set (or the named one) defines, each with its model entry."""

    SUBJECT = "rpc.catalog.roles.v1"

    profile_set: Name | None = None


# --- Profile types and the fixed ids of their system defaults ---------------------------------------------------------

#: The 19 profile types, by number; the system default of type N has id 00000000-0000-0000-0000-0000000000NN.
PROFILE_TYPES: dict[int, str] = {
    1: "primary",
    2: "primary_summary",
    3: "master_summary",
    4: "brief_summary",
    5: "key_points",
    6: "self_critique",
    7: "improvement",
    8: "memory_retrieval",
    9: "analysis",
    10: "research_task",
    11: "research_plan",
    12: "research_consolidation",
    13: "research_analysis",
    14: "embedding",
    15: "formatting",
    16: "image_generation_prompt",
    17: "image_generation",
    18: "engineering",
    19: "reranking",
}
PROFILE_TYPE_NUMBERS: dict[str, int] = {name: n for n, name in PROFILE_TYPES.items()}


def system_profile_id(profile_type: int) -> uuid.UUID:
    """The fixed id of a type's system default profile (type numbers use decimal digits: 19 -> ...000019)."""
    if profile_type not in PROFILE_TYPES:
        raise ValueError(f"profile type must be 1..19, got {profile_type}")
    return uuid.UUID(f"00000000-0000-0000-0000-{profile_type:012d}")


def profile_type_number(value: int | str) -> int:
    """Accept a type by number (`18`, `"18"`) or by name (`engineering`, `Research Plan`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value in PROFILE_TYPES:
            return value
    elif isinstance(value, str):
        key = value.strip().lower().replace(" ", "_").replace("-", "_")
        if key.isdigit() and int(key) in PROFILE_TYPES:
            return int(key)
        if key in PROFILE_TYPE_NUMBERS:
            return PROFILE_TYPE_NUMBERS[key]
    raise ValueError(f"unknown profile type {value!r} (1..19 or one of {', '.join(PROFILE_TYPE_NUMBERS)})")


ProviderName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Text = Annotated[str, StringConstraints(max_length=20_000)]


# --- Who is asking ----------------------------------------------------------------------------------------------------


class Caller(Contract):
    """The authenticated caller the gateway passes on; the catalog applies the permission rules to it."""

    user_id: Name
    admin: bool = False


class AuthReply(Contract):
    user_id: Name
    admin: bool = False
    token_id: uuid.UUID | None = None
    #: when the token stops being usable (a gateway caches the answer no longer); None: it never expires
    expires_at: AwareDatetime | None = None


class AuthRequest(RpcRequest[AuthReply]):
    """Who holds this user token (the admin token never leaves the gateway)."""

    SUBJECT = "rpc.catalog.auth.v1"

    token: Annotated[str, StringConstraints(min_length=1, max_length=512)]


UserId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")]
#: The longest expiry a token may be issued with: ten years.
MAX_TOKEN_LIFETIME_S = 10 * 366 * 24 * 3600


class TokenIssueReply(Contract):
    """The secret `token` appears here once and never again."""

    user_id: Name
    token: str
    token_id: uuid.UUID | None = None
    created_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None


class TokenIssueRequest(RpcRequest[TokenIssueReply]):
    """Admin only: mint a new bearer token for `user_id` (creating the user); earlier tokens stay valid.

    At most one of `expires_in_s` / `expires_at`; neither: the token never expires."""

    SUBJECT = "rpc.catalog.token.issue.v1"

    caller: Caller
    user_id: UserId
    display_name: Annotated[str, StringConstraints(max_length=256)] = ""
    expires_in_s: int | None = Field(default=None, gt=0, le=MAX_TOKEN_LIFETIME_S)
    expires_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _one_expiry(self) -> TokenIssueRequest:
        if self.expires_in_s is not None and self.expires_at is not None:
            raise ValueError("give at most one of expires_in_s, expires_at")
        return self


TokenStatus = Literal["active", "expired", "revoked"]


class TokenDoc(Contract):
    """A token's metadata: never its secret nor its hash."""

    token_id: uuid.UUID
    user_id: Name
    created_at: AwareDatetime
    expires_at: AwareDatetime | None = None
    last_used_at: AwareDatetime | None = None
    revoked_at: AwareDatetime | None = None
    status: TokenStatus = "active"


class TokenListReply(Contract):
    user_id: Name
    tokens: list[TokenDoc] = Field(default_factory=list)


class TokenListRequest(RpcRequest[TokenListReply]):
    """The admin, or the user themself: every token of `user_id` (active, expired and revoked), oldest first."""

    SUBJECT = "rpc.catalog.token.list.v1"

    caller: Caller
    user_id: UserId


class TokenRevokeReply(Contract):
    token: TokenDoc


class TokenRevokeRequest(RpcRequest[TokenRevokeReply]):
    """The admin, or the token's owner: revoke at once. Revoking a revoked token again is a no-op."""

    SUBJECT = "rpc.catalog.token.revoke.v1"

    caller: Caller
    user_id: UserId
    token_id: uuid.UUID


# --- Models -----------------------------------------------------------------------------------------------------------


class QuantizationDoc(Contract):
    name: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    file: Annotated[str, StringConstraints(max_length=512)] = ""
    size_bytes: int = Field(ge=0)
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None


class ModelSources(Contract):
    ollama: Name | None = None
    hf_repo: Name | None = None
    hf_file: Annotated[str, StringConstraints(max_length=512)] | None = None
    hf_revision: Name | None = None
    local_path: Annotated[str, StringConstraints(max_length=1024)] | None = None


class ModelDoc(Contract):
    """One model of the library."""

    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,255}$")]
    display_name: Name
    family: Annotated[str, StringConstraints(max_length=64)] = ""
    provider: ProviderName = "ollama"
    parameter_count: int | None = Field(default=None, ge=0)
    context_window: int | None = Field(default=None, gt=0)
    capabilities: list[str] = Field(default_factory=list)
    category: Annotated[str, StringConstraints(max_length=32)] = "balanced"
    tags: list[str] = Field(default_factory=list)
    ratings: dict[str, int] = Field(default_factory=dict, description="conversation, instruction_following, ... 1-10")
    recommended_use: Text = ""
    min_ram_gb: float | None = Field(default=None, ge=0)
    min_vram_gb: float | None = Field(default=None, ge=0)
    quantizations: list[QuantizationDoc] = Field(default_factory=list)
    sources: ModelSources = Field(default_factory=ModelSources)
    default_parameters: dict[str, Any] = Field(default_factory=dict)
    fallbacks: list[Name] = Field(default_factory=list, description="Model ids to try when this one is unavailable.")
    origin: Annotated[str, StringConstraints(pattern=r"^(curated|imported|custom)$")] = "curated"
    extra: dict[str, Any] = Field(default_factory=dict, description="Fields of the source format kept for export.")
    edited_fields: list[str] = Field(default_factory=list, description="Edited locally; kept on updates.")
    # Added with library shapes (optional, so the major version holds):
    architecture: ModelArchitecture | None = Field(
        default=None, description="Published architecture figures: `fit` sizes the model from them and a file size."
    )


class CatalogModelsReply(Contract):
    models: list[ModelDoc] = Field(default_factory=list)


class CatalogModelsRequest(RpcRequest[CatalogModelsReply]):
    """Filters: every one given must hold."""

    SUBJECT = "rpc.catalog.models.list.v1"

    capability: Name | None = None
    category: Name | None = None
    tag: Name | None = None
    max_size_bytes: int | None = Field(default=None, ge=0)
    family: Name | None = None


class ModelInfoRequest(RpcRequest[ModelDoc]):
    SUBJECT = "rpc.catalog.models.info.v1"

    model: Name


class ModelPatchRequest(RpcRequest[ModelDoc]):
    """Admin only: change fields of one library model (found by id, Ollama name or repo), validated as an import
    validates them; a JSON merge patch (RFC 7396): an object merges into the field, `null` resets it. The changed
    fields are recorded in `edited_fields`, so curated updates keep them."""

    SUBJECT = "rpc.catalog.models.patch.v1"

    caller: Caller
    model: Name
    changes: dict[str, Any]


class SetDefaultReply(Contract):
    default_model: Name
    model_ref: Name


class SetDefaultRequest(RpcRequest[SetDefaultReply]):
    """Admin only: the default model (what `model: "default"` resolves to, and every fallback chain's last resort)."""

    SUBJECT = "rpc.catalog.models.default.v1"

    caller: Caller
    model: Name


# --- Profiles ---------------------------------------------------------------------------------------------------------


class ProfileInput(Contract):
    """A profile as a client writes it; on update, omitted fields keep their value."""

    name: Name | None = None
    type: int | str | None = None
    description: Text | None = None
    model_name: Name | None = None
    parameters: dict[str, Any] | None = None
    system_prompt: Text | None = None
    circuit_breaker: dict[str, Any] | None = None
    gpu_config: dict[str, Any] | None = None


class ProfileDoc(Contract):
    id: uuid.UUID
    owner_id: Name | None = Field(default=None, description="None: a system profile.")
    name: Name
    type: int = Field(ge=1, le=19)
    type_name: Name
    description: Text = ""
    model_name: Name
    parameters: dict[str, Any] = Field(default_factory=dict)
    system_prompt: Text = ""
    circuit_breaker: dict[str, Any] | None = None
    gpu_config: dict[str, Any] | None = None
    system_default: bool = False


class ProfileListReply(Contract):
    profiles: list[ProfileDoc] = Field(default_factory=list)


class ProfileListRequest(RpcRequest[ProfileListReply]):
    """A user sees system profiles and their own; an admin sees all, or one owner's with `owner_id`."""

    SUBJECT = "rpc.catalog.profiles.list.v1"

    caller: Caller
    type: int | str | None = None
    owner_id: Name | None = None


class ProfileGetRequest(RpcRequest[ProfileDoc]):
    SUBJECT = "rpc.catalog.profiles.get.v1"

    caller: Caller
    profile_id: uuid.UUID


class ProfileSaveRequest(RpcRequest[ProfileDoc]):
    """Create (`profile_id` None) or update a profile."""

    SUBJECT = "rpc.catalog.profiles.save.v1"

    caller: Caller
    profile_id: uuid.UUID | None = None
    profile: ProfileInput


class ProfileDeleteReply(Contract):
    profile_id: uuid.UUID
    deleted: bool = True


class ProfileDeleteRequest(RpcRequest[ProfileDeleteReply]):
    SUBJECT = "rpc.catalog.profiles.delete.v1"

    caller: Caller
    profile_id: uuid.UUID


# --- Per-user profile config ------------------------------------------------------------------------------------------


class UserConfigReply(Contract):
    user_id: Name
    profiles: dict[str, uuid.UUID] = Field(default_factory=dict, description="Every type, effective (defaults filled).")
    overrides: dict[str, Any] = Field(default_factory=dict)


class UserConfigRequest(RpcRequest[UserConfigReply]):
    """Set a user's profile per type (by type name or number) and parameter overrides; omitted types keep theirs."""

    SUBJECT = "rpc.catalog.userconfig.set.v1"

    caller: Caller
    user_id: Name
    profiles: dict[str, uuid.UUID | None] = Field(default_factory=dict, description="type -> id (null: default)")
    overrides: dict[str, Any] | None = None


class UserConfigGetRequest(RpcRequest[UserConfigReply]):
    SUBJECT = "rpc.catalog.userconfig.get.v1"

    caller: Caller
    user_id: Name


# --- Profile sets (roles), overview, default --------------------------------------------------------------------------


class RoleModelDoc(Contract):
    name: Name
    provider: ProviderName = "ollama"
    auto_download: bool = True
    parameters: dict[str, Any] = Field(default_factory=dict)
    description: Text = ""
    fallback: FallbackSpec | None = None
    performance_profile: PerformanceProfileName | None = Field(
        default=None, description="The role's default performance profile (a request may name another)."
    )


class ProfileSetDoc(Contract):
    name: Name
    models: dict[str, RoleModelDoc] = Field(default_factory=dict)


class OverviewReply(Contract):
    active_profile_set: Name
    active: ProfileSetDoc
    resolved: dict[str, ResolveReply] = Field(default_factory=dict)
    available_profile_sets: list[ProfileSetDoc] = Field(default_factory=list)
    default_model: Name | None = None
    performance_profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)


class OverviewRequest(RpcRequest[OverviewReply]):
    """Admin only: the active profile set with each role resolved, and every available set."""

    SUBJECT = "rpc.catalog.overview.v1"

    caller: Caller
    user_id: Name | None = None


# --- Import / export --------------------------------------------------------------------------------------------------

ManifestFormat = Annotated[str, StringConstraints(pattern=r"^(json|toml|models\.txt)$")]


#: The model ids an import reply lists at most (`model_count` has the total), so any file's reply fits one message.
MAX_LISTED_MODELS = 1000


class ImportReply(Contract):
    filename: str
    format: ManifestFormat
    profile_sets: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list, description="The models imported, the first MAX_LISTED_MODELS.")
    performance_profiles: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list, description="At most 200, then a count of the rest.")
    # Added with staged imports (optional, so the major version holds):
    model_count: int | None = Field(default=None, ge=0, description="How many models the file imported.")


#: The JetStream object store a file too large for one bus message is staged in (docs/catalog.md#size-limits).
STAGING_BUCKET = "catalog_staging"
#: The largest `content` sent inline in one bus message; a larger file is staged (NATS' max_payload is 1 MiB).
MAX_INLINE_BYTES = 512 * 1024


class StagedFile(Contract):
    """A file put into the `STAGING_BUCKET` object store by the sender, read by the receiver, deleted by the sender."""

    object: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,128}$")]
    size_bytes: int = Field(ge=0)
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class ImportRequest(RpcRequest[ImportReply]):
    """Admin only: one file, applied in one transaction or not at all; `format` guessed from `filename` if absent.

    The file is `content` (inline, up to `MAX_INLINE_BYTES` in practice) or `staged` in the object store."""

    SUBJECT = "rpc.catalog.import.v1"

    caller: Caller
    filename: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    content: Annotated[str, StringConstraints(max_length=10_000_000)] = ""
    format: ManifestFormat | None = None
    # Added with staged imports (optional, so the major version holds):
    staged: StagedFile | None = Field(default=None, description="The file, staged in the object store.")

    @model_validator(mode="after")
    def _one_body(self) -> ImportRequest:
        if self.staged is not None and self.content:
            raise ValueError("give content or staged, not both")
        return self


class ExportReply(Contract):
    """The file is `content`, or, when larger than `MAX_INLINE_BYTES`, `staged` in the object store (the reader
    deletes it)."""

    format: ManifestFormat
    filename: str
    content: str = ""
    staged: StagedFile | None = None


class ExportRequest(RpcRequest[ExportReply]):
    SUBJECT = "rpc.catalog.export.v1"

    caller: Caller
    format: ManifestFormat


class CatalogChanged(Envelope):
    """Something in the catalog changed; every replica reloads its in-memory view."""

    SUBJECT = "evt.catalog.entries.changed.v1"

    what: Annotated[str, StringConstraints(max_length=256)] = ""
    instance_id: Annotated[str, StringConstraints(max_length=64)] = ""
