"""Catalog decisions, free of IO: the in-memory view, resolution, permission rules, profile and config validation."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from contracts.catalog import (
    PROFILE_TYPES,
    Caller,
    CatalogModelsRequest,
    ModelDoc,
    ParameterSource,
    ProfileDoc,
    ProfileInput,
    ProfileSetDoc,
    ResolveReply,
    ResolveRequest,
    RoleEntry,
    RoleModelDoc,
    profile_type_number,
    system_profile_id,
)
from contracts.model_ref import ModelRefError, parse_model_ref
from contracts.parameters import ParameterError, merge_traced, validate_parameters
from contracts.rpc import RpcError

SYSTEM_DEFAULT_IDS = frozenset(system_profile_id(n) for n in PROFILE_TYPES)

#: Roles operators name in manifests -> the profile type whose user choice and system prompt apply to them.
ROLE_TYPES: dict[str, int] = {
    "general": 1,
    "chat": 1,
    "summarization": 2,
    "analysis": 9,
    "embedding": 14,
    "formatting": 15,
    "image": 17,
    "coding": 18,
    "code": 18,
    "reranking": 19,
}


class CatalogError(RpcError):
    """A request the catalog refuses: an `RpcError`, so a handler that lets it through answers the typed error.

    `status` is HTTP-like (401, 403, 404, 409, 422, 503); `field` is the request field at fault, where there is one.
    """


@dataclass
class UserRecord:
    user_id: str
    display_name: str = ""
    profiles: dict[str, uuid.UUID] = field(default_factory=dict)  # type name -> profile id (explicit choices only)
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class CatalogView:
    """Everything resolution needs, held in memory and replaced whole when the catalog changes."""

    models: dict[str, ModelDoc] = field(default_factory=dict)
    profiles: dict[uuid.UUID, ProfileDoc] = field(default_factory=dict)
    sets: dict[str, ProfileSetDoc] = field(default_factory=dict)
    users: dict[str, UserRecord] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_model: str | None = None
    active_set: str = "default"
    global_parameters: dict[str, Any] = field(default_factory=dict)
    _aliases: dict[str, str] = field(default_factory=dict)

    def index(self) -> CatalogView:
        """Build the name index: id, Ollama name (with and without `:latest`), HF repo, canonical references."""
        aliases: dict[str, str] = {}
        for model in self.models.values():
            names = [model.id, model.sources.ollama, model.sources.hf_repo]
            if model.sources.ollama and ":" not in model.sources.ollama:
                names.append(model.sources.ollama + ":latest")
            if model.sources.local_path:
                names.append("local:" + model.sources.local_path)
            for name in names:
                if name:
                    aliases.setdefault(name.lower(), model.id)
        self._aliases = aliases
        return self

    def find_model(self, name: str) -> ModelDoc | None:
        model_id = self._aliases.get(name.strip().lower())
        return self.models.get(model_id) if model_id else None


def model_ref_of(model: ModelDoc) -> tuple[str, str]:
    """What to run for a library model, and with which provider."""
    s = model.sources
    if model.provider == "openai":  # served by an OpenAI-compatible backend under the id it lists
        return model.id, "openai"
    if model.provider == "ollama" and s.ollama:
        return s.ollama, "ollama"
    if model.provider == "local" and s.local_path:
        return f"local:{s.local_path}", "local"
    if s.hf_repo and model.provider != "ollama":
        return (f"{s.hf_repo}@{s.hf_revision}" if s.hf_revision else s.hf_repo), model.provider
    return s.ollama or model.id, model.provider


def check_model_name(view: CatalogView, name: str, where: str) -> None:
    if view.find_model(name) is None:
        try:
            parse_model_ref(name)
        except ModelRefError as exc:
            raise CatalogError(422, f"{where}: {exc}", field=where) from exc


# --- Resolution ------------------------------------------------------------------------------------------------------


def _fallbacks(view: CatalogView, model: ModelDoc | None, ref: str, explicit: Iterable[str] = ()) -> list[str]:
    chain: list[str] = []
    names = [*explicit, *(model.fallbacks if model else ()), *([view.default_model] if view.default_model else [])]
    for name in names:
        found = view.find_model(name)
        target = model_ref_of(found)[0] if found else name
        if target != ref and target not in chain:
            chain.append(target)
    return chain


def performance_profile_of(
    view: CatalogView, req: ResolveRequest, role_entry: RoleModelDoc | None = None
) -> tuple[str | None, dict[str, Any]]:
    """The performance profile that applies: the request's, else the role entry's default; with its parameters.

    An unknown name is a 404 naming it (the request's: field `performance_profile`; a role's default names the role
    in the detail, with no field: the request is not at fault, and `field: role` would read as "no such role")."""
    name = req.performance_profile or (role_entry.performance_profile if role_entry else None)
    if name is None:
        return None, {}
    preset = view.presets.get(name)
    if preset is None:
        have = ", ".join(sorted(view.presets)) or "none; import a TOML file with [performance_profiles.<name>]"
        if req.performance_profile is not None:
            raise CatalogError(
                404, f"performance_profile: no performance profile {name!r} (have: {have})", field="performance_profile"
            )
        raise CatalogError(
            404,
            f"role: {str(req.role).removeprefix('role:')!r} of profile set {view.active_set!r} names performance "
            f"profile {name!r}, which is not defined (have: {have})",
        )
    return name, dict(preset.get("parameters") or {})


def _reply(
    view: CatalogView,
    req: ResolveRequest,
    name: str,
    provider: str | None,
    *,
    profile: ProfileDoc | None = None,
    role: tuple[str, RoleModelDoc] | None = None,
    system_prompt: str = "",
) -> ResolveReply:
    model = view.find_model(name)
    if provider == "openai":
        # The id an OpenAI-compatible backend lists, used as written: it need not parse as a model reference. A
        # library model of that name still lends its defaults and fallbacks.
        ref, default_provider = name.strip(), "openai"
    elif model is not None:
        ref, default_provider = model_ref_of(model) if name.lower() == model.id.lower() else (name, model.provider)
    else:
        try:
            parsed = parse_model_ref(name)
        except ModelRefError as exc:
            raise CatalogError(422, f"model: {exc}", field="model" if req.model is not None else None) from exc
        ref, default_provider = parsed.canonical, parsed.provider
    perf_name, perf_params = performance_profile_of(view, req, role[1] if role else None)
    user = view.users.get(req.user_id) if req.user_id else None
    # (label in errors, source layer, source name, parameters), lowest precedence first: contracts.parameters.LAYERS.
    layers: list[tuple[str, str, str | None, Mapping[str, Any]]] = [
        ("global settings", "global", None, view.global_parameters),
        (f"model {model.id} defaults" if model else "model defaults", "model", model.id if model else None,
         model.default_parameters if model else {}),
        (f"role {role[0]} of profile set {view.active_set}" if role else "role", "role", role[0] if role else None,
         role[1].parameters if role else {}),
        (f"performance profile {perf_name}", "performance_profile", perf_name, perf_params),
        (f"profile {profile.id}" if profile else "profile", "profile", str(profile.id) if profile else None,
         profile.parameters if profile else {}),
        (f"user {req.user_id} overrides", "user", req.user_id, user.overrides if user else {}),
        ("request options", "request", None, req.options),
    ]  # fmt: skip
    try:
        parameters, origin = merge_traced([(label, params) for label, _, _, params in layers])
    except ParameterError as exc:
        # Only the request's own options are a request field; a bad stored layer is named in the detail alone.
        at = f"options.{exc.field}" if exc.layer == "request options" else None
        raise CatalogError(422, str(exc), field=at) from exc
    sources = {
        key: ParameterSource.model_validate({"layer": layers[i][1], "name": layers[i][2]}) for key, i in origin.items()
    }
    explicit = (profile.circuit_breaker or {}).get("fallback_models", []) if profile else []
    return ResolveReply(
        model_ref=ref,
        provider=provider or default_provider,
        profile_id=profile.id if profile else None,
        parameters=parameters,
        system_prompt=system_prompt,
        fallback_chain=_fallbacks(view, model, ref, explicit if isinstance(explicit, list) else []),
        performance_profile=perf_name,
        parameter_sources=sources,
    )


def _from_profile(
    view: CatalogView, req: ResolveRequest, profile: ProfileDoc, role: tuple[str, RoleModelDoc] | None = None
) -> ResolveReply:
    """A profile's model and parameters; a role's entry (when the role has one) lends its default performance
    profile only: the profile replaces the entry's model and parameters."""
    role_default = (
        (role[0], RoleModelDoc(name=role[1].name, performance_profile=role[1].performance_profile)) if role else None
    )
    return _reply(
        view, req, profile.model_name, None, profile=profile, role=role_default, system_prompt=profile.system_prompt
    )


def user_profile_for(view: CatalogView, user_id: str | None, type_number: int) -> ProfileDoc | None:
    """The user's explicit choice for a type (if it still exists and is theirs or a system one)."""
    user = view.users.get(user_id) if user_id else None
    chosen = user.profiles.get(PROFILE_TYPES[type_number]) if user else None
    profile = view.profiles.get(chosen) if chosen else None
    if profile is not None and profile.owner_id in (None, user_id):
        return profile
    return None


def resolve(view: CatalogView, req: ResolveRequest) -> ResolveReply:
    """Role | profile id | model name (+ user) -> model reference, provider, merged parameters, prompt, fallbacks."""
    if req.profile_id is not None:
        profile = view.profiles.get(req.profile_id)
        if profile is None:
            raise CatalogError(404, f"profile_id: no profile {req.profile_id}", field="profile_id")
        if profile.owner_id not in (None, req.user_id):
            raise CatalogError(403, f"profile_id: profile {req.profile_id} belongs to another user", field="profile_id")
        return _from_profile(view, req, profile)
    if req.model is not None:
        name = req.model
        if name == "default":
            if not view.default_model:
                raise CatalogError(404, "model: no default model is set", field="model")
            name = view.default_model
        return _reply(view, req, name, None)
    role = str(req.role).removeprefix("role:")
    type_number = ROLE_TYPES.get(role)
    if type_number is None:
        try:
            type_number = profile_type_number(role)
        except ValueError:
            type_number = None
    entry = view.sets.get(view.active_set, ProfileSetDoc(name=view.active_set)).models.get(role)
    if type_number is not None and (chosen := user_profile_for(view, req.user_id, type_number)) is not None:
        return _from_profile(view, req, chosen, (role, entry) if entry else None)
    if entry is not None:
        default = view.profiles.get(system_profile_id(type_number)) if type_number else None
        prompt = default.system_prompt if default else ""
        return _reply(view, req, entry.name, entry.provider, role=(role, entry), system_prompt=prompt)
    if type_number is not None and (default := view.profiles.get(system_profile_id(type_number))) is not None:
        return _from_profile(view, req, default)
    roles = ", ".join(sorted(view.sets.get(view.active_set, ProfileSetDoc(name="-")).models)) or "none"
    raise CatalogError(
        404, f"role: {role!r} is not defined by profile set {view.active_set!r} (roles: {roles})", field="role"
    )


def role_entries(view: CatalogView, set_name: str | None) -> tuple[str, list[RoleEntry]]:
    name = set_name or view.active_set
    profile_set = view.sets.get(name)
    if profile_set is None:
        raise CatalogError(
            404,
            f"profile_set: no profile set {name!r} (have: {', '.join(sorted(view.sets)) or 'none'})",
            field="profile_set",
        )
    entries = [
        RoleEntry(role=role, model_ref=_entry_ref(view, e), provider=e.provider, auto_download=e.auto_download,
                  parameters=e.parameters, fallback=e.fallback, performance_profile=e.performance_profile)
        for role, e in profile_set.models.items()
    ]  # fmt: skip
    return name, entries


def _entry_ref(view: CatalogView, entry: RoleModelDoc) -> str:
    if entry.provider == "openai":
        return entry.name
    model = view.find_model(entry.name)
    return model_ref_of(model)[0] if model is not None and entry.name.lower() == model.id.lower() else entry.name


# --- Permissions -----------------------------------------------------------------------------------------------------


def check_read(caller: Caller, profile: ProfileDoc) -> None:
    if not (caller.admin or profile.owner_id is None or profile.owner_id == caller.user_id):
        raise CatalogError(403, f"profile {profile.id} belongs to another user")


def check_write(caller: Caller, profile: ProfileDoc) -> None:
    if caller.admin:
        return
    if profile.owner_id is None:
        raise CatalogError(403, f"profile {profile.id} is a system profile: read-only for users")
    if profile.owner_id != caller.user_id:
        raise CatalogError(403, f"profile {profile.id} belongs to another user")


def require_admin(caller: Caller, what: str) -> None:
    if not caller.admin:
        raise CatalogError(403, f"{what} needs the admin token")


def check_user(caller: Caller, user_id: str) -> None:
    if not (caller.admin or caller.user_id == user_id):
        raise CatalogError(403, f"user {user_id!r} is another user")


def visible_profiles(
    view: CatalogView, caller: Caller, type_: int | str | None, owner_id: str | None
) -> list[ProfileDoc]:
    type_number = _type_or_422(type_, "type") if type_ is not None else None
    out = []
    for p in view.profiles.values():
        if type_number is not None and p.type != type_number:
            continue
        if owner_id is not None and p.owner_id != (None if owner_id == "system" else owner_id):
            continue
        if caller.admin or p.owner_id in (None, caller.user_id):
            out.append(p)
    return sorted(out, key=lambda p: (p.owner_id is not None, p.type, p.name, str(p.id)))


def _type_or_422(value: int | str, where: str) -> int:
    try:
        return profile_type_number(value)
    except ValueError as exc:
        raise CatalogError(422, f"{where}: {exc}", field=where) from exc


# --- Profiles and user config ----------------------------------------------------------------------------------------


def build_profile(
    view: CatalogView, caller: Caller, existing: ProfileDoc | None, inp: ProfileInput, new_id: uuid.UUID
) -> ProfileDoc:
    """Validate a create (existing None) or an update; the result is what is stored."""
    base = existing.model_dump() if existing else {"id": new_id, "owner_id": None if caller.admin else caller.user_id}
    given = inp.model_dump(exclude_none=True)
    for required in ("name", "type", "model_name"):
        if existing is None and required not in given:
            raise CatalogError(422, f"{required}: required to create a profile", field=required)
    if "type" in given:
        given["type"] = _type_or_422(given["type"], "type")
        if existing is not None and existing.id in SYSTEM_DEFAULT_IDS and given["type"] != existing.type:
            raise CatalogError(409, f"type: the system default {existing.id} keeps type {existing.type}", field="type")
    if "parameters" in given:
        try:
            given["parameters"] = validate_parameters(given["parameters"], "profile")
        except ParameterError as exc:
            raise CatalogError(422, f"parameters.{exc.field}: {exc}", field=f"parameters.{exc.field}") from exc
    if "model_name" in given:
        check_model_name(view, given["model_name"], "model_name")
    data = {**base, **given}
    data["type_name"] = PROFILE_TYPES[data["type"]]
    data["system_default"] = data["id"] in SYSTEM_DEFAULT_IDS
    try:
        return ProfileDoc.model_validate(data)
    except ValueError as exc:
        raise CatalogError(422, str(exc)) from exc


def effective_config(view: CatalogView, user_id: str) -> dict[str, uuid.UUID]:
    """Every type -> the profile the user gets: their choice where valid, else the system default."""
    out = {}
    for n, name in PROFILE_TYPES.items():
        chosen = user_profile_for(view, user_id, n)
        out[name] = chosen.id if chosen else system_profile_id(n)
    return out


def apply_config(
    view: CatalogView, user: UserRecord, profiles: Mapping[str, uuid.UUID | None], overrides: Mapping[str, Any] | None
) -> UserRecord:
    """The user's record after the change; every referenced profile must be theirs or a system one, of that type."""
    chosen = dict(user.profiles)
    for key, profile_id in profiles.items():
        n = _type_or_422(key, f"profiles.{key}")
        name = PROFILE_TYPES[n]
        if profile_id is None:
            chosen.pop(name, None)
            continue
        profile = view.profiles.get(profile_id)
        if profile is None:
            raise CatalogError(422, f"profiles.{key}: no profile {profile_id}", field=f"profiles.{key}")
        if profile.owner_id not in (None, user.user_id):
            raise CatalogError(
                403, f"profiles.{key}: profile {profile_id} belongs to another user", field=f"profiles.{key}"
            )
        if profile.type != n:
            raise CatalogError(
                422,
                f"profiles.{key}: profile {profile_id} is of type {profile.type_name}, not {name}",
                field=f"profiles.{key}",
            )
        chosen[name] = profile_id
    new_overrides = dict(user.overrides)
    if overrides is not None:
        try:
            new_overrides = validate_parameters(overrides, "overrides")
        except ParameterError as exc:
            raise CatalogError(422, f"overrides.{exc.field}: {exc}", field=f"overrides.{exc.field}") from exc
    return UserRecord(user.user_id, user.display_name, chosen, new_overrides)


# --- Library queries -------------------------------------------------------------------------------------------------


def model_size(model: ModelDoc) -> int | None:
    """The smallest download of a model (what "fits under a maximum size" compares)."""
    sizes = [q.size_bytes for q in model.quantizations]
    return min(sizes) if sizes else None


def filter_models(view: CatalogView, q: CatalogModelsRequest) -> list[ModelDoc]:
    def keep(m: ModelDoc) -> bool:
        size = model_size(m)
        return (
            (q.capability is None or q.capability in m.capabilities)
            and (q.category is None or q.category == m.category)
            and (q.tag is None or q.tag in m.tags)
            and (q.family is None or q.family == m.family)
            and (q.max_size_bytes is None or (size is not None and size <= q.max_size_bytes))
        )

    return sorted((m for m in view.models.values() if keep(m)), key=lambda m: m.id)


def merge_curated(curated: ModelDoc, stored: ModelDoc | None) -> ModelDoc:
    """A curated entry as it should be stored: library values, except fields the operator edited locally."""
    if stored is None:
        return curated
    data = curated.model_dump()
    kept = stored.model_dump()
    for name in stored.edited_fields:
        if name in kept:
            data[name] = kept[name]
    data["edited_fields"] = list(stored.edited_fields)
    data["origin"] = stored.origin
    return ModelDoc.model_validate(data)


# --- Editing a library model -----------------------------------------------------------------------------------------

#: Fields the catalog sets itself: a patch naming one is refused.
_NOT_PATCHABLE = frozenset({"id", "origin", "edited_fields"})
#: Object fields a patch merges into (RFC 7396) instead of replacing.
_MERGED = frozenset({"sources", "ratings", "default_parameters", "extra"})


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: an object merges key by key, `null` removes the key, anything else replaces."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def patch_model(model: ModelDoc, changes: Mapping[str, Any]) -> ModelDoc:
    """The model after a JSON merge patch, validated as an import validates (a 422 naming the field); the changed
    fields join `edited_fields`, so applying the curated library again keeps them. `null` resets a field."""
    known = ModelDoc.model_fields
    for name in changes:
        if name in _NOT_PATCHABLE:
            raise CatalogError(422, f"{name}: set by the catalog, not editable", field=name)
        if name not in known:
            raise CatalogError(
                422, f"{name}: not a model field (fields: {', '.join(n for n in known if n not in _NOT_PATCHABLE)})",
                field=name,
            )  # fmt: skip
    old = model.model_dump(mode="json")
    data = dict(old)
    for name, value in changes.items():
        if value is None:
            default = known[name].get_default(call_default_factory=True)
            if known[name].is_required():
                raise CatalogError(422, f"{name}: required, cannot be reset", field=name)
            data[name] = default.model_dump(mode="json") if hasattr(default, "model_dump") else default
        elif name in _MERGED:
            if not isinstance(value, Mapping):
                raise CatalogError(422, f"{name}: must be an object, got {value!r}"[:300], field=name)
            data[name] = _merge_patch(old.get(name), value)
        else:
            data[name] = value
    if "default_parameters" in changes:
        try:
            data["default_parameters"] = validate_parameters(data["default_parameters"] or {}, "default_parameters")
        except ParameterError as exc:
            at = f"default_parameters.{exc.field}"
            raise CatalogError(422, f"{at}: {exc}", field=at) from exc
    try:
        patched = ModelDoc.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        at = ".".join(map(str, first["loc"])) or "(model)"
        raise CatalogError(422, f"{at}: {first['msg']}", field=at) from exc
    for fallback in patched.fallbacks:
        if fallback.lower() == patched.id.lower():
            raise CatalogError(422, f"fallbacks: {fallback!r} is the model itself", field="fallbacks")
    new = patched.model_dump(mode="json")
    changed = {name for name in changes if new[name] != old.get(name)}
    return patched.model_copy(update={"edited_fields": sorted({*model.edited_fields, *changed})})
