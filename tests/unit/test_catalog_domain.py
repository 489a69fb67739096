"""Catalog decisions: resolution precedence (property), role/profile/model targets, permission rules, curated merges."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.catalog import (
    PROFILE_TYPES,
    Caller,
    CatalogModelsRequest,
    ModelDoc,
    ModelSources,
    ProfileDoc,
    ProfileInput,
    ProfileSetDoc,
    QuantizationDoc,
    ResolveRequest,
    RoleModelDoc,
    system_profile_id,
)
from services.catalog import domain
from services.catalog.domain import CatalogError, CatalogView, UserRecord
from services.catalog.library import load_library

pytestmark = pytest.mark.unit

ADMIN = Caller(user_id="admin", admin=True)
ALICE = Caller(user_id="alice")
BOB = Caller(user_id="bob")


def library_view() -> CatalogView:
    lib = load_library()
    view = CatalogView(
        models={m.id: m for m in lib.models},
        profiles={p.id: p for p in lib.profiles},
        sets={s.name: s for s in lib.sets},
        default_model=lib.default_model,
    )
    return view.index()


def own_profile(owner: str | None, type_: int = 1, **params: object) -> ProfileDoc:
    return ProfileDoc(
        id=uuid.uuid4(), owner_id=owner, name=f"{owner}'s", type=type_, type_name="primary",
        model_name="qwen3-8b", parameters=dict(params), system_prompt=f"prompt of {owner}",
    )  # fmt: skip


def test_curated_library_has_the_required_models_and_real_sizes():
    lib = load_library()
    ids = {m.id for m in lib.models}
    assert len(lib.models) >= 20
    assert {"qwen3-30b-a3b", "qwen3-coder-30b-a3b", "llama3.1-8b", "gemma3-12b", "mistral-7b", "phi4-14b"} <= ids
    assert {"deepseek-r1-7b", "nomic-embed-text", "qwen2.5vl-7b", "flux.1-dev"} <= ids
    for m in lib.models:
        assert m.quantizations and all(q.size_bytes > 10_000_000 for q in m.quantizations), m.id
        assert m.capabilities and m.recommended_use, m.id
    assert [p.id for p in lib.profiles] == [system_profile_id(n) for n in range(1, 20)]


_PARAM = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2, allow_nan=False),
        "top_k": st.integers(0, 100),
        "num_ctx": st.integers(1, 65536),
    },
)


@given(glob=_PARAM, model=_PARAM, profile=_PARAM, user=_PARAM, request_=_PARAM)
def test_resolution_precedence_global_model_profile_user_request(glob, model, profile, user, request_):
    view = CatalogView(global_parameters=glob)
    view.models["m"] = ModelDoc(id="m", display_name="M", sources=ModelSources(ollama="m:1b"), default_parameters=model)
    p = ProfileDoc(
        id=uuid.uuid4(), owner_id="u", name="p", type=1, type_name="primary", model_name="m", parameters=profile
    )
    view.profiles[p.id] = p
    view.users["u"] = UserRecord("u", overrides=user)
    view.index()
    got = domain.resolve(view, ResolveRequest(profile_id=p.id, user_id="u", options=request_)).parameters
    for name in ("temperature", "top_k", "num_ctx"):
        layers = [layer for layer in (glob, model, profile, user, request_) if name in layer]
        assert (name in got) == bool(layers)
        if layers:
            assert got[name] == layers[-1][name]


def test_role_resolution_uses_the_set_then_user_choice_then_type_default():
    view = library_view()
    general = domain.resolve(view, ResolveRequest(role="general"))
    assert general.model_ref == "qwen3:30b-a3b" and general.profile_id is None
    assert general.system_prompt == view.profiles[system_profile_id(1)].system_prompt
    assert general.fallback_chain == ["qwen3:14b", "qwen3:8b"]  # model fallbacks, then the default model (qwen3:8b)
    # A profile type that no set defines resolves to its system default.
    research = domain.resolve(view, ResolveRequest(role="research_plan"))
    assert research.profile_id == system_profile_id(11) and research.model_ref == "qwen3:30b-a3b"
    # The user's own choice for the role's type wins over the set entry.
    mine = own_profile("alice", temperature=0.05)
    view.profiles[mine.id] = mine
    view.users["alice"] = UserRecord("alice", profiles={"primary": mine.id})
    chosen = domain.resolve(view, ResolveRequest(role="general", user_id="alice"))
    assert chosen.profile_id == mine.id and chosen.model_ref == "qwen3:8b" and chosen.parameters["temperature"] == 0.05
    assert domain.resolve(view, ResolveRequest(role="general", user_id="bob")).profile_id is None
    with pytest.raises(CatalogError) as info:
        domain.resolve(view, ResolveRequest(profile_id=mine.id, user_id="bob"))
    assert info.value.status == 403
    assert domain.resolve(view, ResolveRequest(model="default")).model_ref == "qwen3:8b"
    assert domain.resolve(view, ResolveRequest(model="flux.1-dev")).provider == "huggingface"


@pytest.mark.parametrize(
    ("model", "model_ref", "provider"),
    [
        ("hf.co/u/r-GGUF:q4_k_m", "hf.co/u/r-GGUF:Q4_K_M", "ollama"),
        ("hf.co/u/r-GGUF:q4_k_m@v1", "hf.co/u/r-GGUF:Q4_K_M@v1", "ollama"),
        ("acme/coder:1b", "acme/coder:1b", "ollama"),
        ("Qwen/Qwen3-8B@v1.0", "Qwen/Qwen3-8B@v1.0", "huggingface"),
        ("https://huggingface.co/acme/m", "acme/m", "huggingface"),
    ],
)
def test_references_outside_the_library_resolve_to_their_canonical_spelling(model, model_ref, provider):
    got = domain.resolve(library_view(), ResolveRequest(model=model))
    assert (got.model_ref, got.provider) == (model_ref, provider)


def test_refused_references_reach_the_caller_as_422_naming_the_part():
    with pytest.raises(CatalogError, match="a pinned import names its quantization") as info:
        domain.resolve(library_view(), ResolveRequest(model="hf.co/u/r@v1"))
    assert info.value.status == 422


def test_role_resolution_errors_name_the_role_and_set():
    view = library_view()
    with pytest.raises(CatalogError, match="'horoscope' is not defined by profile set 'default'") as info:
        domain.resolve(view, ResolveRequest(role="horoscope"))
    assert info.value.status == 404
    view.active_set = "missing"
    with pytest.raises(CatalogError, match="profile_set"):
        domain.role_entries(view, None)


PERMISSIONS = [
    # (caller, owner of the profile, may read, may write)
    (ADMIN, None, True, True),
    (ADMIN, "alice", True, True),
    (ALICE, "alice", True, True),
    (ALICE, None, True, False),
    (BOB, "alice", False, False),
]


@pytest.mark.parametrize(("who", "owner", "read", "write"), PERMISSIONS)
def test_permission_rules(who, owner, read, write):
    profile = own_profile(owner)
    for check, allowed in ((domain.check_read, read), (domain.check_write, write)):
        if allowed:
            check(who, profile)
        else:
            with pytest.raises(CatalogError) as info:
                check(who, profile)
            assert info.value.status == 403


def test_build_profile_validates_and_assigns_owner():
    view = library_view()
    created = domain.build_profile(
        view, ALICE, None, ProfileInput(name="x", type="engineering", model_name="qwen3:8b"), uuid.uuid4()
    )
    assert created.owner_id == "alice" and created.type == 18 and created.type_name == "engineering"
    assert (
        domain.build_profile(
            view, ADMIN, None, ProfileInput(name="s", type=1, model_name="qwen3-8b"), uuid.uuid4()
        ).owner_id
        is None
    )
    bad = [
        (ProfileInput(type=1, model_name="qwen3:8b"), "name"),
        (ProfileInput(name="x", type=42, model_name="qwen3:8b"), "type"),
        (ProfileInput(name="x", type=1, model_name="bad name!"), "model_name"),
        (ProfileInput(name="x", type=1, model_name="qwen3:8b", parameters={"top_p": 2}), "parameters.top_p"),
    ]
    for inp, field in bad:
        with pytest.raises(CatalogError, match=field) as info:
            domain.build_profile(view, ALICE, None, inp, uuid.uuid4())
        assert info.value.status == 422
    default = view.profiles[system_profile_id(1)]
    with pytest.raises(CatalogError) as info:
        domain.build_profile(view, ADMIN, default, ProfileInput(type=2), uuid.uuid4())
    assert info.value.status == 409
    edited = domain.build_profile(view, ADMIN, default, ProfileInput(system_prompt="Be brief."), uuid.uuid4())
    assert edited.id == default.id and edited.system_prompt == "Be brief." and edited.parameters == default.parameters


def test_user_config_starts_with_defaults_and_checks_each_reference():
    view = library_view()
    assert domain.effective_config(view, "newcomer") == {
        name: system_profile_id(n) for n, name in PROFILE_TYPES.items()
    }
    mine, bobs = own_profile("alice"), own_profile("bob")
    view.profiles.update({mine.id: mine, bobs.id: bobs})
    user = domain.apply_config(view, UserRecord("alice"), {"primary": mine.id}, {"temperature": 0.3})
    assert user.profiles == {"primary": mine.id} and user.overrides == {"temperature": 0.3}
    for profiles, overrides, status, field in [
        ({"primary": bobs.id}, None, 403, "profiles.primary"),
        ({"engineering": mine.id}, None, 422, "profiles.engineering"),
        ({"nonsense": mine.id}, None, 422, "profiles.nonsense"),
        ({}, {"top_p": 5}, 422, "overrides.top_p"),
    ]:
        with pytest.raises(CatalogError, match=field) as info:
            domain.apply_config(view, UserRecord("alice"), profiles, overrides)
        assert info.value.status == status


def test_curated_update_keeps_locally_edited_fields():
    old = ModelDoc(id="m", display_name="Old", recommended_use="mine", edited_fields=["recommended_use"])
    new = ModelDoc(id="m", display_name="New", recommended_use="library's", category="creative")
    merged = domain.merge_curated(new, old)
    assert (merged.display_name, merged.recommended_use, merged.category) == ("New", "mine", "creative")
    assert merged.edited_fields == ["recommended_use"]


def test_library_filters():
    view = library_view()
    ids = lambda **q: {m.id for m in domain.filter_models(view, CatalogModelsRequest(**q))}  # noqa: E731
    assert ids(capability="embedding") == {"nomic-embed-text", "nomic-embed-text-v2-moe"}
    assert "flux.1-dev" in ids(capability="image_generation", category="creative")
    small = ids(max_size_bytes=3_000_000_000)
    assert "llama3.2-3b" in small and "qwen3-30b-a3b" not in small
    assert ids(tag="moe", family="qwen3") == {"qwen3-30b-a3b", "qwen3-coder-30b-a3b"}
    view.models["x"] = ModelDoc(id="x", display_name="x", quantizations=[QuantizationDoc(name="Q8_0", size_bytes=1)])
    view.sets["s"] = ProfileSetDoc(name="s", models={"general": RoleModelDoc(name="x")})
    assert "x" in ids(max_size_bytes=1)


def test_an_openai_entry_resolves_to_the_id_as_its_backend_lists_it():
    view = library_view()
    path = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    view.sets[view.active_set] = ProfileSetDoc(name=view.active_set, models={
        "coding": RoleModelDoc(name=path, provider="openai", parameters={"temperature": 0.2}),
        "general": RoleModelDoc(name="qwen3-8b", provider="openai"),  # a library Ollama model's id, served by vLLM
    })  # fmt: skip
    coding = domain.resolve(view, ResolveRequest(role="coding"))
    assert (coding.model_ref, coding.provider, coding.parameters["temperature"]) == (path, "openai", 0.2)
    general = domain.resolve(view, ResolveRequest(role="general"))
    assert (general.model_ref, general.provider) == ("qwen3-8b", "openai")  # not the library's Ollama name
    entries = {e.role: (e.model_ref, e.provider) for e in domain.role_entries(view, None)[1]}
    assert entries == {"coding": (path, "openai"), "general": ("qwen3-8b", "openai")}
    view.models["smollm2"] = ModelDoc(
        id="smollm2", display_name="SmolLM2", provider="openai",
        sources=ModelSources(hf_repo="HuggingFaceTB/SmolLM2-135M-Instruct"),
    )  # fmt: skip
    got = domain.resolve(view.index(), ResolveRequest(model="smollm2"))
    assert (got.model_ref, got.provider) == ("smollm2", "openai")
