"""Performance profiles, model edits and large imports through the gateway and the `modelfleet` CLI, as a user
runs them: `models resolve --performance-profile`, `PATCH /api/v1/catalog/models/{id}` and `models edit`, an
import of several MB, and the models.txt export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness.catalog import bearer, catalog_fleet
from tests.harness.cli import ADMIN_TOKEN, run_cli

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "catalog"
ADMIN = bearer(ADMIN_TOKEN)


@pytest.fixture
async def fleet(database_url, service_env, start_service, start_gateway):
    async with catalog_fleet(database_url, service_env, start_service, start_gateway) as client:
        yield client


async def test_resolve_with_the_seed_performance_profile_from_the_cli_and_rest(fleet):
    url = str(fleet.base_url).rstrip("/")
    imported = await run_cli(url, "catalog", "import", str(FIXTURES / "config_enhanced.toml"))
    assert imported.returncode == 0, imported.stderr

    done = await run_cli(url, "models", "resolve", "--role", "coding", "--performance-profile", "code_gen", "--json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["parameters"]["temperature"] == 0.2
    assert body["parameter_sources"]["temperature"] == {"layer": "performance_profile", "name": "code_gen"}

    table = await run_cli(url, "models", "resolve", "--role", "coding", "-P", "code_gen")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if "temperature" in line)
    assert "0.2" in row and "performance profile code_gen" in row
    unknown = await run_cli(url, "models", "resolve", "--role", "coding", "--performance-profile", "turbo")
    assert unknown.returncode == 1 and "404" in unknown.stderr and "turbo" in unknown.stderr

    issued = await fleet.post("/api/v1/users/alice/tokens", json={}, headers=ADMIN)
    alice = bearer(issued.json()["token"])
    mine = await fleet.get("/api/v1/catalog/resolve", params={"role": "coding", "performance_profile": "fast"},
                           headers=alice)  # fmt: skip
    assert mine.status_code == 200 and mine.json()["parameters"]["num_predict"] == 512
    for params, who, status in [
        ({"role": "coding", "user_id": "bob"}, alice, 403),
        ({"role": "coding", "model": "qwen3:8b"}, ADMIN, 422),
        ({}, ADMIN, 422),
        ({"role": "coding", "performance_profile": "bad name"}, ADMIN, 422),
        ({"role": "coding"}, {}, 401),
    ]:
        r = await fleet.get("/api/v1/catalog/resolve", params=params, headers=who)
        assert r.status_code == status, (params, r.text)
    missing = await fleet.get("/api/v1/catalog/resolve", params={"role": "coding", "performance_profile": "turbo"},
                              headers=alice)  # fmt: skip
    assert missing.status_code == 404 and missing.json()["field"] == "performance_profile"


async def test_patch_a_library_model_over_http_and_the_cli(fleet):
    url = str(fleet.base_url).rstrip("/")
    path = "/api/v1/catalog/models/flux.1-dev"
    patched = await fleet.patch(path, json={"tags": ["ours"], "ratings": {"image": 9}}, headers=ADMIN)
    assert patched.status_code == 200, patched.text
    assert patched.json()["tags"] == ["ours"] and patched.json()["ratings"]["image"] == 9
    assert {"tags", "ratings"} <= set(patched.json()["edited_fields"])
    assert (await fleet.get(path, headers=ADMIN)).json()["tags"] == ["ours"]

    issued = await fleet.post("/api/v1/users/alice/tokens", json={}, headers=ADMIN)
    alice = bearer(issued.json()["token"])
    assert (await fleet.patch(path, json={"tags": []}, headers=alice)).status_code == 403
    bad = await fleet.patch(path, json={"context_window": -5, "tags": ["x"]}, headers=ADMIN)
    assert bad.status_code == 422 and bad.json()["field"] == "context_window", bad.text
    not_object = await fleet.patch(path, content=b"[1]", headers={**ADMIN, "content-type": "application/json"})
    assert not_object.status_code == 422
    assert (await fleet.get(path, headers=ADMIN)).json()["tags"] == ["ours"]  # the refused patch wrote nothing
    unknown = await fleet.patch("/api/v1/catalog/models/no-such-model", json={"tags": []}, headers=ADMIN)
    assert unknown.status_code == 404

    edited = await run_cli(url, "models", "edit", "qwen3:8b", "--set", "recommended_use=site notes",
                           "--set", 'default_parameters={"temperature": 0.3}', "--json")  # fmt: skip
    assert edited.returncode == 0, edited.stderr
    assert json.loads(edited.stdout)["default_parameters"]["temperature"] == 0.3
    refused = await run_cli(url, "models", "edit", "qwen3:8b", "--set", "min_vram_gb=-1")
    assert refused.returncode == 1 and "min_vram_gb" in refused.stderr


async def test_a_multi_megabyte_import_and_the_models_txt_export(fleet):
    lines = [f"org{i}/model-{i}" for i in range(300)]
    content = ("\n".join(lines) + "\n" + ("# " + "y" * 998 + "\n") * 2500).encode()  # ~2.5 MB
    assert len(content) > 2 * 1024 * 1024
    imported = await fleet.post("/api/v1/catalog/import", params={"filename": "many.txt"}, content=content,
                                headers=ADMIN, timeout=120)  # fmt: skip
    assert imported.status_code == 200, imported.text
    assert imported.json()["model_count"] == 300

    bad = content + b"not a line\n"
    refused = await fleet.post("/api/v1/catalog/import", params={"filename": "bad.txt"}, content=bad, headers=ADMIN,
                               timeout=120)  # fmt: skip
    assert refused.status_code == 422 and refused.json()["detail"].startswith("bad.txt: line 2801: model")

    exported = await fleet.get("/api/v1/catalog/export", params={"format": "models.txt"}, headers=ADMIN)
    listed = set(exported.text.splitlines())
    assert set(lines) <= listed and "black-forest-labs/FLUX.1-schnell" in listed
