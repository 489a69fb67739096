"""User tokens through catalog processes on real NATS and PostgreSQL: the additive migration keeps old tokens,
expiry and revocation give 401 naming which, and a revocation holds at once on every replica (no cache)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from pathlib import Path

import nats
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from contracts.catalog import Caller
from services.runtime import db as runtime_db
from tests.harness.catalog import healthy_instances

pytestmark = pytest.mark.integration

ADMIN = Caller(user_id="admin", admin=True).model_dump()
ALICE = Caller(user_id="alice").model_dump()
BOB = Caller(user_id="bob").model_dump()
MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "catalog" / "migrations"


async def rpc(nc, subject: str, body: dict) -> dict:
    return json.loads((await nc.request(subject, json.dumps(body).encode(), timeout=10)).data)


async def auth(nc, token: str) -> dict:
    return await rpc(nc, "rpc.catalog.auth.v1", {"token": token})


def refused(detail: str) -> dict:
    """The typed error body of a 401 from rpc.catalog.auth.v1 (no request field is at fault: the token is)."""
    return {"status": 401, "code": "unauthorized", "detail": detail, "field": None}


async def issue(nc, user: str, **expiry: object) -> dict:
    reply = await rpc(nc, "rpc.catalog.token.issue.v1", {"caller": ADMIN, "user_id": user, **expiry})
    assert "error" not in reply, reply
    return reply


async def migrate_to(url: str, revision: str) -> runtime_db.Database:
    """The catalog schema as an older release left it (Alembic up to `revision` only)."""
    database = runtime_db.Database(url, "catalog", MIGRATIONS)

    def upgrade(connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(runtime_db._ALEMBIC_DIR))
        config.set_main_option("path_separator", "os")
        config.set_main_option("version_locations", str(MIGRATIONS))
        config.attributes["connection"] = connection
        config.attributes["schema"] = "catalog"
        command.upgrade(config, revision)

    async with database.engine.begin() as conn:
        await conn.execute(text('CREATE SCHEMA IF NOT EXISTS "catalog"'))
        await conn.run_sync(upgrade)
    return database


async def test_migration_keeps_existing_tokens_working_without_expiry(
    nats_url, database_url, service_env, start_service
):
    old = await migrate_to(database_url, "catalog_0002")
    try:
        async with old.engine.begin() as conn:
            await conn.execute(text("INSERT INTO catalog.users (id, display_name, profiles, overrides) "
                                    "VALUES ('legacy', '', '{}', '{}')"))  # fmt: skip
            digest = hashlib.sha256(b"mf_legacy-token").hexdigest()
            await conn.execute(text("INSERT INTO catalog.tokens (token_sha256, user_id) VALUES (:d, 'legacy')"),
                               {"d": digest})  # fmt: skip
    finally:
        await old.close()

    await start_service("catalog", service_env(database_url=database_url))
    nc = await nats.connect(nats_url)
    try:
        reply = await auth(nc, "mf_legacy-token")
        assert reply["user_id"] == "legacy" and uuid.UUID(reply["token_id"])
        listed = await rpc(nc, "rpc.catalog.token.list.v1", {"caller": ADMIN, "user_id": "legacy"})
        [token] = listed["tokens"]
        assert token["token_id"] == reply["token_id"] and token["status"] == "active"
        assert token["expires_at"] is None and token["revoked_at"] is None and token["last_used_at"] is not None
        assert not {"token", "token_sha256"} & set(token)
    finally:
        await nc.close()


async def test_expiry_and_revocation_answer_401_naming_which(nats_url, database_url, service_env, start_service):
    env = service_env(database_url=database_url, MODELFLEET_CATALOG_TOKEN_TOUCH_INTERVAL_S="0")
    await start_service("catalog", env)
    nc = await nats.connect(nats_url)
    try:
        short = await issue(nc, "alice", expires_in_s=1)
        assert short["expires_at"] is not None and short["token_id"]
        assert (await auth(nc, short["token"]))["user_id"] == "alice"
        deadline = time.monotonic() + 10
        while "error" not in (reply := await auth(nc, short["token"])):
            assert time.monotonic() < deadline, "a 1 s token was still accepted after 10 s"
        assert reply["error"]["status"] == 401 and reply["error"]["detail"].startswith("token expired at ")

        born_dead = await rpc(nc, "rpc.catalog.token.issue.v1",
                              {"caller": ADMIN, "user_id": "alice", "expires_at": "2001-01-01T00:00:00Z"})  # fmt: skip
        assert born_dead["error"]["status"] == 422 and "expires_at" in born_dead["error"]["detail"]
        both_given = {"caller": ADMIN, "user_id": "alice", "expires_in_s": 5, "expires_at": "2999-01-01T00:00Z"}
        both = await rpc(nc, "rpc.catalog.token.issue.v1", both_given)
        assert both["error"]["status"] == 422 and "at most one" in both["error"]["detail"]
        assert (await auth(nc, "mf_never-issued"))["error"] == refused("unknown token")

        keep = await issue(nc, "alice")
        assert (await auth(nc, keep["token"]))["token_id"] == keep["token_id"]
        bobs = await issue(nc, "bob")
        revoke = "rpc.catalog.token.revoke.v1"
        # Bob cannot touch alice's tokens; under his own path alice's id is as unknown as a random one.
        mine_by_other = await rpc(nc, revoke, {"caller": BOB, "user_id": "alice", "token_id": keep["token_id"]})
        assert mine_by_other["error"]["status"] == 403
        foreign = await rpc(nc, revoke, {"caller": BOB, "user_id": "bob", "token_id": keep["token_id"]})
        random_id = str(uuid.uuid4())
        unknown = await rpc(nc, revoke, {"caller": BOB, "user_id": "bob", "token_id": random_id})
        assert foreign["error"]["status"] == unknown["error"]["status"] == 404
        assert foreign["error"]["code"] == unknown["error"]["code"] == "not_found"
        assert foreign["error"]["detail"] == unknown["error"]["detail"].replace(random_id, keep["token_id"])

        done = await rpc(nc, revoke, {"caller": ALICE, "user_id": "alice", "token_id": keep["token_id"]})
        assert done["token"]["status"] == "revoked" and done["token"]["revoked_at"]
        assert (await auth(nc, keep["token"]))["error"] == refused("token revoked")
        again = await rpc(nc, revoke, {"caller": ADMIN, "user_id": "alice", "token_id": keep["token_id"]})
        assert again["token"]["revoked_at"] == done["token"]["revoked_at"]
        assert (await auth(nc, bobs["token"]))["user_id"] == "bob"

        listed = await rpc(nc, "rpc.catalog.token.list.v1", {"caller": ALICE, "user_id": "alice"})
        states = {t["token_id"]: t["status"] for t in listed["tokens"]}
        assert states == {short["token_id"]: "expired", keep["token_id"]: "revoked"}
        assert all(t["last_used_at"] for t in listed["tokens"])
        assert "mf_" not in json.dumps(listed)
        other = await rpc(nc, "rpc.catalog.token.list.v1", {"caller": BOB, "user_id": "alice"})
        assert other["error"]["status"] == 403
    finally:
        await nc.close()


async def test_revocation_holds_at_once_on_every_replica(nats_url, database_url, service_env, start_service):
    env = service_env(database_url=database_url)
    await start_service("catalog", env)
    await start_service("catalog", env)
    nc = await nats.connect(nats_url)
    try:
        deadline = time.monotonic() + 30  # the harness's health wait may have been answered by the first replica
        while len(await healthy_instances(nc)) < 2:
            assert time.monotonic() < deadline, "the second replica never answered its health subject"
            await asyncio.sleep(0.1)
        issued = await issue(nc, "alice")
        # The queue group spreads these over both replicas: each must accept it before, and refuse it right after.
        for _ in range(20):
            assert (await auth(nc, issued["token"]))["user_id"] == "alice"
        done = await rpc(nc, "rpc.catalog.token.revoke.v1",
                         {"caller": ADMIN, "user_id": "alice", "token_id": issued["token_id"]})  # fmt: skip
        assert done["token"]["status"] == "revoked"
        answers = [await auth(nc, issued["token"]) for _ in range(40)]
        assert all(a.get("error") == refused("token revoked") for a in answers), answers
    finally:
        await nc.close()
