"""Typed errors across two hops: a catalog refusal reaches the HTTP client with its status, code and field intact;
an invalid request is a 422 at once (never a timeout); a silent service is a 504, an absent one a 503."""

from __future__ import annotations

import json
import time
import uuid

import nats
import pytest

from contracts.catalog import ResolveRequest, system_profile_id
from contracts.provisioner import UpdateStatusRequest
from tests.harness.catalog import bearer, catalog_fleet
from tests.harness.cli import ADMIN_TOKEN

pytestmark = pytest.mark.e2e

ADMIN = bearer(ADMIN_TOKEN)
#: Short, so the silent-service case below answers quickly.
REQUEST_TIMEOUT_S = 1.0


@pytest.fixture
async def fleet(database_url, service_env, start_service, start_gateway):
    async with catalog_fleet(
        database_url, service_env, start_service, start_gateway,
        MODELFLEET_GATEWAY_REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S),
    ) as client:  # fmt: skip
        yield client


def error_of(response) -> tuple[int, str, str | None]:
    body = response.json()
    assert set(body) == {"detail", "code", "field"}, body
    return response.status_code, body["code"], body["field"]


async def test_catalog_refusals_keep_status_code_and_field_through_the_gateway(fleet):
    missing = uuid.uuid4()
    r = await fleet.get(f"/api/v1/profiles/{missing}", headers=ADMIN)
    assert error_of(r) == (404, "not_found", "profile_id")
    assert r.json()["detail"] == f"no profile {missing}"

    r = await fleet.post(
        "/api/v1/profiles",
        json={"name": "hot", "type": "primary", "model_name": "qwen3:8b", "parameters": {"temperature": 9}},
        headers=ADMIN,
    )
    assert error_of(r) == (422, "invalid_request", "parameters.temperature")
    assert r.json()["detail"].startswith("parameters.temperature: ")

    r = await fleet.put("/api/v1/users/alice/profile-config", json={"profiles": {"primary": None, "astrology": None}},
                        headers=ADMIN)  # fmt: skip
    assert error_of(r) == (422, "invalid_request", "profiles.astrology")

    r = await fleet.delete(f"/api/v1/profiles/{system_profile_id(1)}", headers=ADMIN)
    assert error_of(r) == (409, "conflict", "profile_id")

    r = await fleet.get("/api/v1/catalog/models/no-such-model", headers=ADMIN)
    assert error_of(r) == (404, "not_found", "model")
    assert "'no-such-model' is not in the library" in r.json()["detail"]

    # A refused user token: the catalog's 401 with its wording, and the gateway adds the Bearer challenge.
    r = await fleet.get("/api/v1/profiles", headers=bearer("mf_never-issued"))
    assert error_of(r) == (401, "unauthorized", None)
    assert r.json()["detail"] == "unknown token" and r.headers["www-authenticate"] == "Bearer"


async def test_an_invalid_request_is_a_422_at_once_and_is_counted(fleet, nats_url):
    nc = await nats.connect(nats_url)
    try:
        started = time.monotonic()
        msg = await nc.request(ResolveRequest.SUBJECT, b'{"role": "general", "model": "qwen3:8b"}', timeout=5)
        assert time.monotonic() - started < 2  # answered, not waited out
        assert msg.headers == {"Mf-Rpc": "error"}
        error = json.loads(msg.data)["error"]
        assert (error["status"], error["code"]) == (422, "invalid_request")
        assert "exactly one of role, profile_id, model" in error["detail"]

        garbage = await nc.request(ResolveRequest.SUBJECT, b"\xffnot json", timeout=5)
        assert json.loads(garbage.data)["error"]["status"] == 422
        health = json.loads((await nc.request("rpc.catalog.health.v1", b"{}", timeout=5)).data)
        assert health["invalid_requests"] == 2 and health["healthy"]
    finally:
        await nc.close()


async def test_a_silent_service_is_a_504_and_an_absent_one_a_503(fleet, nats_url):
    # No provisioner runs here: nobody serves its subjects, and NATS says so at once.
    r = await fleet.get("/api/v1/updates", headers=ADMIN)
    assert error_of(r) == (503, "no_responders", None)
    assert UpdateStatusRequest.SUBJECT in r.json()["detail"]

    nc = await nats.connect(nats_url)
    try:
        await nc.subscribe(UpdateStatusRequest.SUBJECT)  # a responder that never answers
        await nc.flush()
        started = time.monotonic()
        r = await fleet.get("/api/v1/updates", headers=ADMIN)
        assert error_of(r) == (504, "timeout", None)
        assert r.json()["detail"] == f"no answer on {UpdateStatusRequest.SUBJECT} within {REQUEST_TIMEOUT_S:g} s"
        assert REQUEST_TIMEOUT_S <= time.monotonic() - started < REQUEST_TIMEOUT_S + 3
    finally:
        await nc.close()
