"""Imports against real PostgreSQL: each format applied in one transaction, each kind of bad file changing nothing,
and a library update on restart that keeps what the operator edited."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import nats
import pytest

from contracts.catalog import Caller, ExportRequest, ImportRequest, ProfileInput, ProfileSaveRequest, system_profile_id
from services.catalog.library import LIBRARY_FILE

pytestmark = pytest.mark.integration

ADMIN = Caller(user_id="admin", admin=True)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "catalog"
TABLES = ("models", "profiles", "profile_sets", "performance_profiles", "users", "tokens", "meta")


async def rpc(nc, subject: str, body) -> dict:
    return json.loads((await nc.request(subject, body.model_dump_json().encode(), timeout=10)).data)


async def snapshot(database_url: str) -> dict[str, list]:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        out = {t: [tuple(r) for r in await conn.fetch(f"SELECT * FROM catalog.{t} ORDER BY 1")] for t in TABLES}
        out["outbox"] = [tuple(r) for r in await conn.fetch("SELECT event_id, subject FROM catalog.outbox ORDER BY id")]
        return out
    finally:
        await conn.close()


def importing(path: Path) -> ImportRequest:
    return ImportRequest(caller=ADMIN, filename=path.name, content=path.read_text())


async def test_each_format_imports_and_each_bad_file_changes_nothing(
    nats_url, database_url, service_env, start_service
):
    await start_service("catalog", service_env(database_url=database_url))
    nc = await nats.connect(nats_url)
    try:
        for name, expect in [
            ("llm_models.json", {"profile_sets": ["default"]}),
            ("llm_models_multi.json", {"profile_sets": ["default", "laptop"]}),
            ("config_enhanced.toml", {"models": ["gemma2-2b-it", "gemma3-4b-it-sfp"]}),
            ("models.txt", {"models": ["deepseek-ai/Janus-Pro-1B"]}),
        ]:
            reply = await rpc(nc, ImportRequest.SUBJECT, importing(FIXTURES / name))
            assert "error" not in reply, reply
            for key, values in expect.items():
                assert set(values) <= set(reply[key]), (name, reply)
        multi_warnings = (await rpc(nc, ImportRequest.SUBJECT, importing(FIXTURES / "llm_models_multi.json")))[
            "warnings"
        ]
        assert any("'anthropic'" in w for w in multi_warnings)

        before = await snapshot(database_url)
        assert len(before["models"]) >= 30 + 2 + 5 and len(before["profile_sets"]) == 2
        bad_files = sorted((FIXTURES / "bad").iterdir())
        assert len(bad_files) >= 9
        for path in bad_files:
            reply = await rpc(nc, ImportRequest.SUBJECT, importing(path))
            assert reply["error"]["status"] == 422, (path.name, reply)
            assert reply["error"]["detail"].startswith(f"{path.name}: "), reply
            assert reply["error"]["field"] == "content", reply  # the request field; the detail names the key
            assert await snapshot(database_url) == before, f"{path.name} changed the database"

        not_admin = await rpc(
            nc, ImportRequest.SUBJECT, ImportRequest(caller=Caller(user_id="eve"), filename="x.txt", content="a/b")
        )
        assert (not_admin["error"]["status"], not_admin["error"]["code"]) == (403, "forbidden")
        assert await snapshot(database_url) == before

        for fmt in ("json", "toml", "models.txt"):
            exported = await rpc(nc, ExportRequest.SUBJECT, ExportRequest(caller=ADMIN, format=fmt))
            again = await rpc(nc, ImportRequest.SUBJECT, ImportRequest(caller=ADMIN, filename=exported["filename"],
                                                                       content=exported["content"]))  # fmt: skip
            assert "error" not in again, (fmt, again)
        after = await snapshot(database_url)
        assert {k: v for k, v in after.items() if k not in ("outbox", "models", "profile_sets")} == {
            k: v for k, v in before.items() if k not in ("outbox", "models", "profile_sets")
        }
        assert [r[0] for r in after["models"]] == [r[0] for r in before["models"]]  # re-import adds nothing
    finally:
        await nc.close()


async def test_library_update_on_restart_keeps_local_edits(
    nats_url, database_url, service_env, start_service, tmp_path
):
    first = await start_service("catalog", service_env(database_url=database_url))
    nc = await nats.connect(nats_url)
    try:
        preset = '[model_presets.qwen3-8b]\nweights = "/models/qwen3-8b.gguf"\nuse_case = "our notes"\n'
        reply = await rpc(nc, ImportRequest.SUBJECT, ImportRequest(caller=ADMIN, filename="edit.toml", content=preset))
        assert reply["models"] == ["qwen3-8b"]
        edited_default = await rpc(nc, ProfileSaveRequest.SUBJECT, ProfileSaveRequest(
            caller=ADMIN, profile_id=system_profile_id(1), profile=ProfileInput(system_prompt="Site prompt."),
        ))  # fmt: skip
        assert edited_default["system_prompt"] == "Site prompt."
        first.stop()

        updated = LIBRARY_FILE.read_text()
        updated = updated.replace('display_name = "Qwen3 8B"', 'display_name = "Qwen3 8B (2026 card)"')
        updated = updated.replace("Default model for 8 GB GPUs", "Library text that must not win")
        updated += '\n[[models]]\nid = "brand-new"\ndisplay_name = "Brand New"\ncapabilities = ["chat"]\n'
        updated += (
            'quantizations = [{ name = "Q4_K_M", size_bytes = 1_000_000_000 }]\nsources = { ollama = "new:1b" }\n'
        )
        library = tmp_path / "library.toml"
        library.write_text(updated)
        await start_service(
            "catalog", service_env(database_url=database_url, MODELFLEET_CATALOG_LIBRARY_PATH=str(library))
        )

        info = await rpc_json(nc, "rpc.catalog.models.info.v1", {"model": "qwen3-8b"})
        assert info["display_name"] == "Qwen3 8B (2026 card)"  # not edited locally: the library's new value
        assert info["recommended_use"] == "our notes"  # edited locally: kept
        assert "recommended_use" in info["edited_fields"]
        assert (await rpc_json(nc, "rpc.catalog.models.info.v1", {"model": "new:1b"}))["id"] == "brand-new"
        get = {"caller": ADMIN.model_dump(), "profile_id": str(system_profile_id(1))}
        default = await rpc_json(nc, "rpc.catalog.profiles.get.v1", get)
        assert default["system_prompt"] == "Site prompt."  # an admin's edit of a system default survives too
    finally:
        await nc.close()


async def rpc_json(nc, subject: str, body: dict) -> dict:
    return json.loads((await nc.request(subject, json.dumps(body).encode(), timeout=10)).data)
