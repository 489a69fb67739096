"""Performance profiles in resolution: their place in the precedence, the source of every parameter, a role's
default, unknown names, and the JSON manifest field that names a role's default (round trip)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from contracts.catalog import ProfileDoc, ProfileSetDoc, ResolveRequest, RoleModelDoc
from services.catalog import domain, manifests
from services.catalog.domain import CatalogError, CatalogView, UserRecord
from services.catalog.library import load_library

pytestmark = pytest.mark.unit

SEED_TOML = Path(__file__).resolve().parents[1] / "fixtures" / "catalog" / "config_enhanced.toml"


def view_with_seed_presets(**sets: ProfileSetDoc) -> CatalogView:
    lib = load_library()
    plan = manifests.parse(SEED_TOML.name, SEED_TOML.read_text())
    view = CatalogView(
        models={m.id: m for m in lib.models},
        profiles={p.id: p for p in lib.profiles},
        sets={s.name: s for s in lib.sets} | sets,
        presets=plan.presets,
        default_model=lib.default_model,
        global_parameters={"seed": 7},
    )
    return view.index()


def src(reply, key: str) -> tuple[str, str | None]:
    source = reply.parameter_sources[key]
    return source.layer, source.name


def test_code_gen_from_the_seed_toml_gives_coding_its_temperature_and_says_so():
    view = view_with_seed_presets()
    reply = domain.resolve(view, ResolveRequest(role="coding", performance_profile="code_gen"))
    assert reply.performance_profile == "code_gen"
    assert reply.parameters["temperature"] == 0.2 and src(reply, "temperature") == ("performance_profile", "code_gen")
    assert reply.parameters["num_predict"] == 2048 and src(reply, "num_predict") == ("performance_profile", "code_gen")
    assert reply.parameters["top_k"] == 20
    assert src(reply, "num_ctx") == ("role", "coding")  # the role entry's own value: below the performance profile
    assert src(reply, "seed") == ("global", None)
    assert set(reply.parameter_sources) == set(reply.parameters)


def test_precedence_performance_profile_is_above_role_and_model_and_below_profile_user_request():
    view = view_with_seed_presets()
    view.users["alice"] = UserRecord("alice", overrides={"top_p": 0.5})
    req = ResolveRequest(role="coding", performance_profile="balanced", user_id="alice", options={"top_k": 3})
    reply = domain.resolve(view, req)
    assert reply.parameters["temperature"] == 0.7 and src(reply, "temperature") == ("performance_profile", "balanced")
    assert reply.parameters["top_p"] == 0.5 and src(reply, "top_p") == ("user", "alice")
    assert reply.parameters["top_k"] == 3 and src(reply, "top_k") == ("request", None)

    # A profile (here the type's system default, which sets all ten parameters) wins over the performance profile.
    profile_id = next(iter(view.profiles))
    by_profile = domain.resolve(view, ResolveRequest(profile_id=profile_id, performance_profile="code_gen"))
    assert src(by_profile, "temperature") == ("profile", str(profile_id))
    assert by_profile.performance_profile == "code_gen"

    # A model target: model defaults < performance profile.
    by_model = domain.resolve(view, ResolveRequest(model="qwen3-8b", performance_profile="fast"))
    assert by_model.parameters["num_predict"] == 512 and src(by_model, "num_predict") == ("performance_profile", "fast")


def test_a_role_names_its_default_and_a_request_replaces_it():
    entry = RoleModelDoc(name="qwen3-8b", parameters={"temperature": 0.9}, performance_profile="fast")
    view = view_with_seed_presets(default=ProfileSetDoc(name="default", models={"writer": entry}))
    reply = domain.resolve(view, ResolveRequest(role="writer"))
    assert reply.performance_profile == "fast"
    assert reply.parameters["temperature"] == 0.5 and src(reply, "temperature") == ("performance_profile", "fast")
    other = domain.resolve(view, ResolveRequest(role="writer", performance_profile="code_gen"))
    assert other.performance_profile == "code_gen" and other.parameters["temperature"] == 0.2
    entries = {e.role: e.performance_profile for e in domain.role_entries(view, None)[1]}
    assert entries == {"writer": "fast"}


def test_a_chosen_profile_still_gets_the_roles_default_performance_profile_beneath_it():
    entry = RoleModelDoc(name="qwen3-8b", performance_profile="code_gen")
    view = view_with_seed_presets(default=ProfileSetDoc(name="default", models={"coding": entry}))
    mine = ProfileDoc(
        id=uuid.uuid4(), owner_id="alice", name="mine", type=18, type_name="engineering", model_name="qwen3-14b",
        parameters={"temperature": 0.6},
    )  # fmt: skip
    view.profiles[mine.id] = mine
    view.users["alice"] = UserRecord("alice", profiles={"engineering": mine.id})
    reply = domain.resolve(view, ResolveRequest(role="coding", user_id="alice"))
    assert reply.profile_id == mine.id and reply.model_ref == "qwen3:14b"
    assert src(reply, "temperature") == ("profile", str(mine.id))
    assert src(reply, "top_k") == ("performance_profile", "code_gen")


def test_unknown_names_are_404_naming_them():
    view = view_with_seed_presets()
    with pytest.raises(CatalogError) as err:
        domain.resolve(view, ResolveRequest(role="coding", performance_profile="nope"))
    assert (err.value.status, err.value.field) == (404, "performance_profile")
    assert "'nope'" in err.value.detail and "code_gen" in err.value.detail

    entry = RoleModelDoc(name="qwen3-8b", performance_profile="gone")
    broken = view_with_seed_presets(default=ProfileSetDoc(name="default", models={"writer": entry}))
    with pytest.raises(CatalogError) as err:
        domain.resolve(broken, ResolveRequest(role="writer"))
    assert err.value.status == 404 and "'gone'" in err.value.detail and "'writer'" in err.value.detail


def test_json_manifest_carries_a_roles_default_performance_profile_both_ways():
    text = '{"profiles": {"p": {"models": {"coding": {"name": "qwen3:8b", "performance_profile": "code_gen"}}}}}'
    plan = manifests.parse("m.json", text)
    assert plan.sets[0].models["coding"].performance_profile == "code_gen"
    again = manifests.parse("m.json", manifests.export_json(plan.sets))
    assert again.sets == plan.sets
    with pytest.raises(manifests.ManifestError) as err:
        manifests.parse("m.json", text.replace('"code_gen"', '"bad name"'))
    assert err.value.field == "performance_profile" and "profiles.p.models.coding" in str(err.value)
