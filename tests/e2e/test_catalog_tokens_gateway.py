"""User tokens through the gateway process and the CLI: issue with an expiry, list (metadata only), revoke by the
owner or the admin, and the 401 that says whether a token was revoked or expired."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import nats
import pytest
from typer.testing import CliRunner

from contracts.catalog import AuthRequest
from services.cli.main import app as cli
from tests.harness.catalog import bearer, catalog_fleet
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.waiting import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
async def fleet(database_url, service_env, start_service, start_gateway):
    async with catalog_fleet(database_url, service_env, start_service, start_gateway) as client:
        yield client


async def test_list_and_revoke_over_http(fleet):
    admin = bearer(ADMIN_TOKEN)
    soon = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    a1 = (await fleet.post("/api/v1/users/alice/tokens", json={"expires_at": soon}, headers=admin)).json()
    a2 = (await fleet.post("/api/v1/users/alice/tokens", json={"expires_in_s": 3600}, headers=admin)).json()
    b1 = (await fleet.post("/api/v1/users/bob/tokens", json={}, headers=admin)).json()
    assert a1["token"].startswith("mf_") and a1["expires_at"] and b1["expires_at"] is None and a2["created_at"]
    alice, bob = bearer(a1["token"]), bearer(b1["token"])
    bad = await fleet.post("/api/v1/users/alice/tokens", json={"expires_in_s": 60, "expires_at": soon}, headers=admin)
    assert bad.status_code == 422
    naive = await fleet.post("/api/v1/users/alice/tokens", json={"expires_at": "2999-01-01T00:00:00"}, headers=admin)
    assert naive.status_code == 422 and "expires_at" in naive.text

    path = "/api/v1/users/alice/tokens"
    for who, status in ((alice, 200), (admin, 200), (bob, 403), ({}, 401), (bearer("mf_nope"), 401)):
        r = await fleet.get(path, headers=who)
        assert r.status_code == status, (who, r.text)
    listed = (await fleet.get(path, headers=alice)).json()["tokens"]
    assert [t["token_id"] for t in listed] == [a1["token_id"], a2["token_id"]]
    assert {t["status"] for t in listed} == {"active"} and listed[0]["last_used_at"]  # alice just used a1
    assert a1["token"] not in json.dumps(listed) and "sha256" not in json.dumps(listed)

    # Bob may not revoke alice's token; under his own path its id is unknown (no hint it exists).
    assert (await fleet.delete(f"{path}/{a2['token_id']}", headers=bob)).status_code == 403
    hidden = await fleet.delete(f"/api/v1/users/bob/tokens/{a2['token_id']}", headers=bob)
    assert hidden.status_code == 404 and "alice" not in hidden.text
    assert (await fleet.delete(f"{path}/not-a-uuid", headers=alice)).status_code == 422

    # The owner revokes a2; the admin revokes a1 while alice is using it.
    a2_headers = bearer(a2["token"])
    assert (await fleet.get(path, headers=a2_headers)).status_code == 200
    gone = await fleet.delete(f"{path}/{a2['token_id']}", headers=alice)
    assert gone.status_code == 200 and gone.json()["token"]["status"] == "revoked"
    refused = await fleet.get(path, headers=a2_headers)
    assert refused.status_code == 401 and refused.json()["detail"] == "token revoked"
    assert refused.headers["www-authenticate"] == "Bearer"
    assert (await fleet.delete(f"{path}/{a1['token_id']}", headers=admin)).status_code == 200
    assert (await fleet.get("/api/v1/profiles", headers=alice)).json()["detail"] == "token revoked"
    assert (await fleet.get("/api/v1/profiles", headers=bob)).status_code == 200
    assert (await fleet.get("/api/v1/profiles", headers=bearer("mf_nope"))).json()["detail"] == "unknown token"


async def test_expired_token_and_the_cli(fleet, monkeypatch):
    admin = bearer(ADMIN_TOKEN)
    short = (await fleet.post("/api/v1/users/carol/tokens", json={"expires_in_s": 1}, headers=admin)).json()
    deadline = time.monotonic() + 10
    while (r := await fleet.get("/api/v1/profiles", headers=bearer(short["token"]))).status_code == 200:
        assert time.monotonic() < deadline, "a 1 s token was still accepted after 10 s"
    assert r.status_code == 401 and r.json()["detail"].startswith("token expired at ")

    monkeypatch.setenv("MODELFLEET_URL", str(fleet.base_url).rstrip("/"))
    monkeypatch.setenv("MODELFLEET_TOKEN", ADMIN_TOKEN)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args))
        assert result.exit_code == 0, (args, result.output)
        return result.output

    issued = json.loads(run("tokens", "issue", "carol", "--expires-in", "30d", "--json"))
    expires = datetime.fromisoformat(issued["expires_at"]) - datetime.fromisoformat(issued["created_at"])
    assert expires == timedelta(days=30) and issued["token"].startswith("mf_")
    dated = json.loads(run("tokens", "issue", "carol", "--expires-at", "2099-01-31T00:00:00+02:00", "--json"))
    assert datetime.fromisoformat(dated["expires_at"]) == datetime(2099, 1, 30, 22, tzinfo=UTC)
    listed = json.loads(run("tokens", "list", "carol", "--json"))["tokens"]
    assert {t["token_id"]: t["status"] for t in listed} == {
        short["token_id"]: "expired", issued["token_id"]: "active", dated["token_id"]: "active",
    }  # fmt: skip
    monkeypatch.setenv("COLUMNS", "140")  # rich's width: the whole row on one line
    table = run("tokens", "list", "carol")
    assert issued["token_id"] in table and "expired" in table and issued["token"] not in table
    assert "revoked" in run("tokens", "revoke", "carol", issued["token_id"])
    assert (await fleet.get("/api/v1/profiles", headers=bearer(issued["token"]))).json()["detail"] == "token revoked"

    monkeypatch.setenv("MODELFLEET_TOKEN", "mf_nope")
    refused = runner.invoke(cli, ["tokens", "list", "carol"])
    assert refused.exit_code == 1 and "unknown token" in refused.output
    bad = runner.invoke(cli, ["tokens", "issue", "carol", "--expires-in", "soon"])
    assert bad.exit_code == 2 and "--expires-in" in bad.output
    naive = runner.invoke(cli, ["tokens", "issue", "carol", "--expires-at", "2099-01-31T00:00:00"])
    assert naive.exit_code == 2 and "UTC offset" in naive.output
    both = runner.invoke(cli, ["tokens", "issue", "carol", "--expires-in", "1d", "--expires-at", "2099-01-31T00:00Z"])
    assert both.exit_code == 2 and "not both" in both.output


async def test_a_gateway_reuses_an_accepted_token_and_drops_it_on_a_revocation_made_elsewhere(
    nats_url, database_url, service_env, start_service, start_gateway
):
    """Two gateways: the second asks the catalog once for five requests with one token; a revocation through the
    first reaches the second by the catalog's change event, and the token is refused there too."""
    env = service_env(database_url=database_url, MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN)
    await start_service("catalog", env)
    one, other = await start_gateway(env), await start_gateway(env)
    nc = await nats.connect(nats_url)
    asks = await nc.subscribe(AuthRequest.SUBJECT)  # a copy of every token check asked of the catalog
    admin = bearer(ADMIN_TOKEN)
    try:
        async with httpx.AsyncClient(base_url=one, timeout=15) as a, httpx.AsyncClient(base_url=other, timeout=15) as b:
            issued = (await a.post("/api/v1/users/dave/tokens", json={}, headers=admin)).json()
            dave = bearer(issued["token"])
            for _ in range(5):
                assert (await b.get("/api/v1/profiles", headers=dave)).status_code == 200
            await nc.flush()  # the server's PONG comes after any copy of an ask those requests made
            assert asks.delivered == 1

            revoked = await a.delete(f"/api/v1/users/dave/tokens/{issued['token_id']}", headers=admin)
            assert revoked.status_code == 200
            assert (await a.get("/api/v1/profiles", headers=dave)).json()["detail"] == "token revoked"  # at once

            async def refused_there() -> httpx.Response | None:
                r = await b.get("/api/v1/profiles", headers=dave)
                return r if r.status_code == 401 else None

            refused = await eventually(refused_there, 10, "the other gateway refusing the revoked token")
            assert refused.json()["detail"] == "token revoked"
    finally:
        await nc.close()
