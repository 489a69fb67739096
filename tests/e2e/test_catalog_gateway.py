"""The catalog and the gateway as separate processes, driven over HTTP and through the CLI: auth and the
permission matrix (admin, owner, other user, no token), profile config, the library, import/export, default model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contracts.catalog import system_profile_id
from services.cli.main import app as cli
from tests.harness.catalog import bearer, catalog_fleet
from tests.harness.cli import ADMIN_TOKEN

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "catalog"
PRIMARY = str(system_profile_id(1))


@pytest.fixture
async def fleet(database_url, service_env, start_service, start_gateway):
    async with catalog_fleet(database_url, service_env, start_service, start_gateway) as client:
        yield client


async def test_permission_matrix(fleet):
    admin = bearer(ADMIN_TOKEN)
    tokens = {}
    for user in ("alice", "bob"):
        issued = await fleet.post(f"/api/v1/users/{user}/tokens", json={"display_name": user.title()}, headers=admin)
        assert issued.status_code == 201, issued.text
        tokens[user] = issued.json()["token"]
    alice, bob = bearer(tokens["alice"]), bearer(tokens["bob"])
    assert (await fleet.post("/api/v1/users/carol/tokens", json={}, headers=alice)).status_code == 403
    assert (await fleet.post("/api/v1/users/admin/tokens", json={}, headers=admin)).status_code == 422

    created = await fleet.post(
        "/api/v1/profiles",
        json={"name": "alice fast", "type": "primary", "model_name": "qwen3:8b", "parameters": {"temperature": 0.2}},
        headers=alice,
    )
    assert created.status_code == 201, created.text
    mine = created.json()
    assert mine["owner_id"] == "alice" and mine["type_name"] == "primary"
    own = f"/api/v1/profiles/{mine['id']}"
    system = f"/api/v1/profiles/{PRIMARY}"
    edit = {"description": "edited"}

    # (method, path, body, who, expected status)
    matrix = [
        ("GET", own, None, alice, 200), ("GET", own, None, admin, 200), ("GET", own, None, bob, 403),
        ("GET", own, None, {}, 401), ("GET", own, None, bearer("not-a-token"), 401),
        ("PUT", own, edit, alice, 200), ("PUT", own, edit, admin, 200), ("PUT", own, edit, bob, 403),
        ("PUT", own, edit, {}, 401),
        ("GET", system, None, alice, 200), ("GET", system, None, bob, 200), ("GET", system, None, {}, 401),
        ("PUT", system, edit, alice, 403), ("PUT", system, edit, bob, 403), ("PUT", system, edit, admin, 200),
        ("DELETE", system, None, admin, 409), ("DELETE", system, None, alice, 403),
        ("DELETE", own, None, bob, 403), ("DELETE", own, None, {}, 401),
        ("GET", "/api/v1/models", None, admin, 200), ("GET", "/api/v1/models", None, alice, 403),
        ("GET", "/api/v1/models", None, {}, 401),
        ("GET", "/api/v1/catalog/models", None, bob, 200), ("GET", "/api/v1/catalog/models", None, {}, 401),
        ("POST", "/api/v1/models/default", {"model": "qwen3:14b"}, alice, 403),
        ("GET", "/api/v1/catalog/export", None, alice, 403),
        ("PUT", "/api/v1/users/alice/profile-config", {"profiles": {"primary": mine["id"]}}, bob, 403),
        ("PUT", "/api/v1/users/bob/profile-config", {"profiles": {"primary": mine["id"]}}, bob, 403),
        ("GET", "/api/v1/users/alice/profile-config", None, bob, 403),
    ]  # fmt: skip
    for method, path, body, who, status in matrix:
        r = await fleet.request(method, path, json=body, headers=who)
        assert r.status_code == status, (method, path, who, r.status_code, r.text)
        if status == 401:
            assert r.headers.get("www-authenticate") == "Bearer"

    listed = {p["id"] for p in (await fleet.get("/api/v1/profiles", headers=bob)).json()["profiles"]}
    assert mine["id"] not in listed and PRIMARY in listed and len(listed) == 19
    assert mine["id"] in {p["id"] for p in (await fleet.get("/api/v1/profiles", headers=alice)).json()["profiles"]}

    # A new user starts with the system defaults; alice points `primary` at her profile.
    config = (await fleet.get("/api/v1/users/alice/profile-config", headers=alice)).json()
    assert config["profiles"]["primary"] == PRIMARY and len(config["profiles"]) == 19
    put = await fleet.put(
        "/api/v1/users/alice/profile-config",
        json={"profiles": {"primary": mine["id"]}, "overrides": {"num_ctx": 8192}},
        headers=alice,
    )
    assert put.status_code == 200 and put.json()["profiles"]["primary"] == mine["id"]
    bad = await fleet.put("/api/v1/users/alice/profile-config", json={"overrides": {"top_p": 9}}, headers=alice)
    assert bad.status_code == 422 and "overrides.top_p" in bad.json()["detail"]
    overview = (await fleet.get("/api/v1/models", params={"user_id": "alice"}, headers=admin)).json()
    assert overview["active_profile_set"] == "default"
    resolved = overview["resolved"]["general"]
    assert resolved["profile_id"] == mine["id"] and resolved["model_ref"] == "qwen3:8b"
    assert resolved["parameters"]["temperature"] == 0.2 and resolved["parameters"]["num_ctx"] == 8192

    assert (await fleet.delete(own, headers=alice)).status_code == 200
    assert (await fleet.get(own, headers=alice)).status_code == 404


async def test_library_import_export_and_default_over_http(fleet):
    admin = bearer(ADMIN_TOKEN)
    embedding = (await fleet.get("/api/v1/catalog/models", params={"capability": "embedding"}, headers=admin)).json()
    assert {m["id"] for m in embedding["models"]} == {"nomic-embed-text", "nomic-embed-text-v2-moe"}
    small = (await fleet.get("/api/v1/catalog/models", params={"max_size_gb": 3}, headers=admin)).json()["models"]
    assert small and all(min(q["size_bytes"] for q in m["quantizations"]) <= 3e9 for m in small)
    info = await fleet.get("/api/v1/catalog/models/qwen3:30b-a3b", headers=admin)
    assert info.status_code == 200 and info.json()["id"] == "qwen3-30b-a3b"

    path = FIXTURES / "llm_models_multi.json"
    imported = await fleet.post(
        "/api/v1/catalog/import", params={"filename": path.name}, content=path.read_bytes(), headers=admin
    )
    assert imported.status_code == 200, imported.text
    assert imported.json()["profile_sets"] == ["default", "laptop"] and "anthropic" in imported.json()["warnings"][0]
    bad = FIXTURES / "bad" / "top_p_out_of_range.json"
    refused = await fleet.post("/api/v1/catalog/import", params={"filename": bad.name}, content=bad.read_bytes(),
                               headers=admin)  # fmt: skip
    assert refused.status_code == 422 and refused.json()["detail"].startswith("top_p_out_of_range.json: key ")
    huge = await fleet.post("/api/v1/catalog/import", params={"filename": "big.txt"}, content=b"a/b\n" * 300_000,
                            headers=admin)  # fmt: skip
    assert huge.status_code == 200, huge.text  # over one bus message: staged (docs/catalog.md#size-limits)
    assert huge.json()["models"] == ["a/b"] and huge.json()["warnings"][-1] == "big.txt: 299799 more warnings not shown"
    exported = await fleet.get("/api/v1/catalog/export", params={"format": "json"}, headers=admin)
    assert exported.status_code == 200 and "laptop.json" not in exported.headers["content-disposition"]
    assert json.loads(exported.text)["profiles"]["laptop"]["models"]["general"] == "llama3.2:3b"

    default = await fleet.post("/api/v1/models/default", json={"model": "qwen3:14b"}, headers=admin)
    assert default.status_code == 200 and default.json() == {"default_model": "qwen3-14b", "model_ref": "qwen3:14b"}
    assert (await fleet.post("/api/v1/models/default", json={"model": "no such!"}, headers=admin)).status_code == 422
    assert (await fleet.get("/api/v1/models", headers=admin)).json()["default_model"] == "qwen3-14b"


async def test_cli_against_the_gateway(fleet, monkeypatch, tmp_path):
    monkeypatch.setenv("MODELFLEET_URL", str(fleet.base_url).rstrip("/"))
    monkeypatch.setenv("MODELFLEET_TOKEN", ADMIN_TOKEN)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args))
        assert result.exit_code == 0, (args, result.output)
        return result.output

    listed = json.loads(run("models", "list", "--capability", "vision", "--json"))
    assert "qwen2.5vl-7b" in {m["id"] for m in listed["models"]}
    assert "Qwen3 30B-A3B" in run("models", "info", "qwen3-30b-a3b")
    assert "qwen3-8b" in run("models", "set-default", "qwen3:8b")

    created = json.loads(run("profiles", "create", "--name", "cli", "--type", "engineering", "--model", "qwen3:8b",
                             "--param", "temperature=0.1", "--param", 'stop=["</s>"]', "--json"))  # fmt: skip
    assert created["parameters"] == {"temperature": 0.1, "stop": ["</s>"]} and created["owner_id"] is None
    updated = json.loads(run("profiles", "update", created["id"], "--param", "num_ctx=4096", "--json"))
    assert updated["parameters"] == {"temperature": 0.1, "stop": ["</s>"], "num_ctx": 4096}
    assert "profiles (2)" in run("profiles", "list", "--type", "engineering")  # the system default and this one
    engineering = json.loads(run("profiles", "list", "--type", "18", "--json"))["profiles"]
    assert created["id"] in {p["id"] for p in engineering}
    assert json.loads(run("profiles", "show", PRIMARY, "--json"))["system_default"] is True
    run("profiles", "delete", created["id"])

    out = " ".join(run("catalog", "import", str(FIXTURES / "config_enhanced.toml")).split())
    assert "2 models" in out and "3 performance profiles" in out and "[gemma] is not a catalog section" in out
    target = tmp_path / "presets.toml"
    run("catalog", "export", "--format", "toml", "--output", str(target))
    assert "[performance_profiles.balanced]" in target.read_text()
    txt = run("catalog", "export", "--format", "models.txt")
    assert txt.startswith("#")

    bad = runner.invoke(cli, ["catalog", "import", str(FIXTURES / "bad" / "bad_line.txt")])
    assert bad.exit_code == 1 and "bad_line.txt: line 4: model" in " ".join(bad.output.split())
