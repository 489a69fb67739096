"""Editing a profile through the gateway and the CLI: `PUT /api/v1/profiles/{id}` applies the checks of a create
(422 naming the field, nothing changed), and `modelfleet profiles update` shows the API's reason."""

from __future__ import annotations

import json

import pytest

from tests.harness.catalog import bearer, catalog_fleet
from tests.harness.cli import ADMIN_TOKEN, run_cli

pytestmark = pytest.mark.e2e

ADMIN = bearer(ADMIN_TOKEN)


@pytest.fixture
async def fleet(database_url, service_env, start_service, start_gateway):
    async with catalog_fleet(database_url, service_env, start_service, start_gateway) as client:
        yield client


async def test_put_profile_validates_like_create(fleet):
    body = {"name": "edit-me", "type": "primary", "model_name": "qwen3:8b", "parameters": {"temperature": 0.2}}
    made = (await fleet.post("/api/v1/profiles", json=body, headers=ADMIN)).json()
    path = f"/api/v1/profiles/{made['id']}"
    ok = await fleet.put(path, json={"parameters": {"temperature": 0.7}, "system_prompt": "short"}, headers=ADMIN)
    assert ok.status_code == 200, ok.text
    assert (ok.json()["parameters"], ok.json()["name"], ok.json()["system_prompt"]) == (
        {"temperature": 0.7}, "edit-me", "short"
    )  # fmt: skip
    for edit, status, field in [
        ({"parameters": {"temperature": 9}}, 422, "parameters.temperature"),
        ({"type": "nope"}, 422, "type"),
        ({"name": ""}, 422, "name"),
        ({"parameters": "hot"}, 422, "parameters"),
    ]:
        r = await fleet.put(path, json=edit, headers=ADMIN)
        assert r.status_code == status and field in r.text, (edit, r.status_code, r.text)
    assert (await fleet.put("/api/v1/profiles/not-a-uuid", json={}, headers=ADMIN)).status_code == 422
    assert (await fleet.get(path, headers=ADMIN)).json()["parameters"] == {"temperature": 0.7}

    url = str(fleet.base_url).rstrip("/")
    bad = await run_cli(url, "profiles", "update", made["id"], "--param", "temperature=9")
    assert bad.returncode == 1 and "422" in bad.stderr and "temperature" in bad.stderr
    good = await run_cli(url, "profiles", "update", made["id"], "--model", "qwen3:14b", "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["model_name"] == "qwen3:14b"
    typed = await run_cli(url, "profiles", "update", made["id"], "--type", "engineering", "--json")
    assert typed.returncode == 0, typed.stderr
    assert json.loads(typed.stdout)["type_name"] == "engineering"
    unknown = await run_cli(url, "profiles", "update", made["id"], "--type", "nope")
    assert unknown.returncode == 1 and "422" in unknown.stderr and "type" in unknown.stderr
