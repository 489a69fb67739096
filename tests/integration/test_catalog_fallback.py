"""A manifest role's `fallback` object through the real catalog: imported, stored, returned by roles, exported."""

from __future__ import annotations

import json

import nats
import pytest

from contracts.catalog import Caller, ExportRequest, ImportRequest, OverviewRequest, RolesRequest

pytestmark = pytest.mark.integration

ADMIN = Caller(user_id="admin", admin=True)


async def rpc(nc, body) -> dict:
    return json.loads((await nc.request(body.SUBJECT, body.model_dump_json().encode(), timeout=10)).data)


async def test_fallback_is_stored_returned_and_exported(nats_url, database_url, service_env, start_service):
    await start_service("catalog", service_env(database_url=database_url, LLM_MODELS_PROFILE="lab"))
    nc = await nats.connect(nats_url)
    try:
        path_spec = {"path": "/srv/models/smollm2.gguf", "max_seq_length": 1024}
        repo_spec = {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "12fd25f77366fa6b3b4b768ec3050bf62938"}
        manifest = {"profiles": {"lab": {"models": {
            "general": {"name": "qwen3:8b", "fallback": path_spec},
            "coding": {"name": "qwen3-coder:30b", "fallback": repo_spec},
            "summary": "qwen3:8b",
        }}}}  # fmt: skip
        reply = await rpc(nc, ImportRequest(caller=ADMIN, filename="llm.json", content=json.dumps(manifest)))
        assert reply.get("profile_sets") == ["lab"], reply

        roles = {r["role"]: r for r in (await rpc(nc, RolesRequest()))["roles"]}
        assert roles["general"]["fallback"] == {**path_spec, "repo": None, "revision": None}
        assert roles["coding"]["fallback"] == {**repo_spec, "path": None, "max_seq_length": None}
        assert roles["summary"]["fallback"] is None

        overview = await rpc(nc, OverviewRequest(caller=ADMIN))
        assert overview["active"]["models"]["general"]["fallback"]["path"] == path_spec["path"]

        exported = await rpc(nc, ExportRequest(caller=ADMIN, format="json"))
        models = json.loads(exported["content"])["profiles"]["lab"]["models"]
        assert models["general"]["fallback"] == path_spec and models["coding"]["fallback"] == repo_spec

        # A bad fallback is refused whole, naming the manifest, the role and the field; nothing changes.
        manifest["profiles"]["lab"]["models"]["general"]["fallback"] = {"path": "relative/x.gguf"}
        bad = await rpc(nc, ImportRequest(caller=ADMIN, filename="llm.json", content=json.dumps(manifest)))
        assert bad["error"]["status"] == 422, bad
        assert bad["error"]["detail"].startswith("llm.json: key profiles.lab.models.general.fallback: fallback.path: ")
        again = {r["role"]: r for r in (await rpc(nc, RolesRequest()))["roles"]}
        assert again["general"]["fallback"]["path"] == path_spec["path"]
    finally:
        await nc.close()
