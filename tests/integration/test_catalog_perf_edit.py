"""The real catalog over NATS and PostgreSQL: performance profiles in resolution (the seed's TOML imported, a role's
default from a JSON manifest), editing a library model (PATCH's bus side: validated, all or nothing), an import
larger than one bus message staged through the JetStream object store, and the models.txt export rule."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import nats
import pytest

from contracts.catalog import (
    MAX_INLINE_BYTES,
    Caller,
    ExportRequest,
    ImportRequest,
    ModelPatchRequest,
    ResolveRequest,
    RolesRequest,
    StagedFile,
)
from services.runtime import staging

pytestmark = pytest.mark.integration

ADMIN = Caller(user_id="admin", admin=True)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "catalog"


async def rpc(nc, body) -> dict:
    return json.loads((await nc.request(body.SUBJECT, body.model_dump_json().encode(), timeout=60)).data)


async def models_table(database_url: str) -> list[tuple]:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return [tuple(r) for r in await conn.fetch("SELECT id, doc::text FROM catalog.models ORDER BY id")]
    finally:
        await conn.close()


@pytest.fixture
async def catalog_bus(nats_url, database_url, service_env, start_service):
    await start_service("catalog", service_env(database_url=database_url))
    nc = await nats.connect(nats_url)
    try:
        assert "error" not in await rpc(nc, ResolveRequest(model="qwen3-8b"))  # answered once the library is loaded
        yield nc
    finally:
        await nc.close()


async def test_seed_toml_performance_profile_applies_with_its_source(catalog_bus):
    nc = catalog_bus
    seed = FIXTURES / "config_enhanced.toml"
    imported = await rpc(nc, ImportRequest(caller=ADMIN, filename=seed.name, content=seed.read_text()))
    assert "code_gen" in imported["performance_profiles"], imported

    got = await rpc(nc, ResolveRequest(role="coding", performance_profile="code_gen"))
    assert got["performance_profile"] == "code_gen"
    assert got["parameters"]["temperature"] == 0.2
    assert got["parameter_sources"]["temperature"] == {"layer": "performance_profile", "name": "code_gen"}
    assert got["parameters"]["num_predict"] == 2048 and got["parameters"]["top_k"] == 20
    assert got["parameter_sources"]["num_ctx"] == {"layer": "role", "name": "coding"}

    plain = await rpc(nc, ResolveRequest(role="coding"))
    assert plain["performance_profile"] is None
    assert "performance_profile" not in {s["layer"] for s in plain["parameter_sources"].values()}

    unknown = await rpc(nc, ResolveRequest(role="coding", performance_profile="turbo"))
    assert (unknown["error"]["status"], unknown["error"]["field"]) == (404, "performance_profile")
    assert "'turbo'" in unknown["error"]["detail"] and "code_gen" in unknown["error"]["detail"]

    manifest = {"profiles": {"default": {"models": {
        "coding": {"name": "qwen3-coder:30b", "performance_profile": "code_gen"},
        "general": {"name": "qwen3:8b", "performance_profile": "not_yet"},
    }}}}  # fmt: skip
    reply = await rpc(nc, ImportRequest(caller=ADMIN, filename="m.json", content=json.dumps(manifest)))
    assert any("'not_yet' is not defined yet" in w for w in reply["warnings"]), reply
    by_default = await rpc(nc, ResolveRequest(role="coding"))
    assert by_default["performance_profile"] == "code_gen"
    assert by_default["parameter_sources"]["temperature"]["name"] == "code_gen"
    replaced = await rpc(nc, ResolveRequest(role="coding", performance_profile="balanced"))
    assert replaced["parameters"]["temperature"] == 0.7
    broken = await rpc(nc, ResolveRequest(role="general"))
    assert broken["error"]["status"] == 404 and "'not_yet'" in broken["error"]["detail"]
    roles = {r["role"]: r["performance_profile"] for r in (await rpc(nc, RolesRequest()))["roles"]}
    assert roles == {"coding": "code_gen", "general": "not_yet"}
    exported = await rpc(nc, ExportRequest(caller=ADMIN, format="json"))
    assert json.loads(exported["content"])["profiles"]["default"]["models"]["coding"]["performance_profile"] == (
        "code_gen"
    )


async def test_patch_validates_like_import_and_changes_nothing_when_refused(catalog_bus, database_url):
    nc = catalog_bus
    before = await models_table(database_url)
    refused = [
        ({"context_window": 0}, "context_window"),
        ({"default_parameters": {"top_p": 3}}, "default_parameters.top_p"),
        ({"quantizations": [{"name": "Q4_K_M", "size_bytes": -1}]}, "quantizations.0.size_bytes"),
        ({"colour": "blue"}, "colour"),
        ({"id": "renamed"}, "id"),
        ({"display_name": None}, "display_name"),
        ({"recommended_use": "fine", "min_ram_gb": "lots"}, "min_ram_gb"),  # one bad field: the good one is not written
    ]
    for changes, field in refused:
        reply = await rpc(nc, ModelPatchRequest(caller=ADMIN, model="qwen3-8b", changes=changes))
        assert (reply["error"]["status"], reply["error"]["field"]) == (422, field), (changes, reply)
        assert reply["error"]["detail"].startswith(field), reply
    assert await models_table(database_url) == before

    not_admin = await rpc(nc, ModelPatchRequest(caller=Caller(user_id="eve"), model="qwen3-8b", changes={"tags": []}))
    assert not_admin["error"]["status"] == 403
    missing = await rpc(nc, ModelPatchRequest(caller=ADMIN, model="nope", changes={"tags": []}))
    assert (missing["error"]["status"], missing["error"]["field"]) == (404, "model")

    changes = {"recommended_use": "our notes", "default_parameters": {"temperature": 0.4},
               "sources": {"hf_revision": "main"}}  # fmt: skip
    patched = await rpc(nc, ModelPatchRequest(caller=ADMIN, model="qwen3:8b", changes=changes))  # by Ollama name
    assert patched["id"] == "qwen3-8b" and patched["recommended_use"] == "our notes"
    assert patched["sources"]["ollama"] == "qwen3:8b" and patched["sources"]["hf_revision"] == "main"  # merged
    assert {"recommended_use", "default_parameters", "sources"} <= set(patched["edited_fields"])
    resolved = await rpc(nc, ResolveRequest(model="qwen3-8b"))
    assert resolved["parameter_sources"]["temperature"] == {"layer": "model", "name": "qwen3-8b"}
    again = await rpc(nc, ModelPatchRequest(caller=ADMIN, model="qwen3-8b", changes=changes))
    assert again == patched  # idempotent


async def test_an_import_larger_than_a_bus_message_is_staged_and_all_or_nothing(catalog_bus, database_url):
    nc = catalog_bus
    # 1,500 repos and 2,200 local files with long paths: the models.txt export of them is itself over one message.
    lines = [f"org{i}/model-{i}" for i in range(1500)]
    lines += [f"local:{'d' * 200}/{i:05d}/{'f' * 30}.gguf" for i in range(2200)]
    padding = "# " + "x" * 1000 + "\n"
    good = "\n".join(lines) + "\n" + padding * 3000  # ~3 MB: three times NATS' default max_payload
    bad = good + "not a model line\n"
    before = await models_table(database_url)

    staged_bad = await staging.stage(nc, bad.encode())
    refused = await rpc(nc, ImportRequest(caller=ADMIN, filename="big.txt", staged=staged_bad))
    await staging.discard(nc, staged_bad)
    assert refused["error"]["status"] == 422 and refused["error"]["detail"].startswith("big.txt: line "), refused
    assert await models_table(database_url) == before

    staged = await staging.stage(nc, good.encode())
    assert staged.size_bytes > 3 * 1024 * 1024 - 100_000
    reply = await rpc(nc, ImportRequest(caller=ADMIN, filename="big.txt", staged=staged))
    await staging.discard(nc, staged)
    assert "error" not in reply, reply
    assert reply["model_count"] == 3700 and len(reply["models"]) == 1000

    tampered = staged.model_copy(update={"object": "gone"})
    gone = await rpc(nc, ImportRequest(caller=ADMIN, filename="big.txt", staged=tampered))
    assert (gone["error"]["status"], gone["error"]["field"]) == (422, "staged")

    # The models.txt export lists every model the format can express: the imported ones, the curated Hugging Face
    # ones; not the Ollama-served ones. Larger than one message, it comes back staged.
    exported = await rpc(nc, ExportRequest(caller=ADMIN, format="models.txt"))
    assert exported["content"] == "" and exported["staged"]["size_bytes"] > MAX_INLINE_BYTES
    ref = StagedFile.model_validate(exported["staged"])
    text = (await staging.fetch(nc, ref)).decode()
    await staging.discard(nc, ref)
    listed = set(text.splitlines())
    assert set(lines) <= listed
    assert {"black-forest-labs/FLUX.1-dev", "BAAI/bge-reranker-v2-m3"} <= listed
    assert "qwen3:8b" not in listed and not any(line.startswith("Qwen/") for line in listed)
