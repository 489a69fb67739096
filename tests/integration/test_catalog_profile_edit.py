"""Editing a profile on the bus (rpc.catalog.profile.save.v1 with a profile id) against the catalog process on real
NATS + PostgreSQL: omitted fields keep their value, the checks of a create apply, owner/admin rules, and the edit
reaches resolution and the profile.changed event."""

from __future__ import annotations

import json
import uuid

import nats
import pytest

from contracts.catalog import (
    Caller,
    ProfileGetRequest,
    ProfileInput,
    ProfileSaveRequest,
    ResolveRequest,
    system_profile_id,
)

pytestmark = pytest.mark.integration

ADMIN = Caller(user_id="admin", admin=True)
ALICE = Caller(user_id="alice")
BOB = Caller(user_id="bob")


async def rpc(nc, subject: str, body: object) -> dict:
    payload = body.model_dump(mode="json")  # type: ignore[attr-defined]
    return json.loads((await nc.request(subject, json.dumps(payload).encode(), timeout=10)).data)


async def save(nc, caller: Caller, profile_id: uuid.UUID | None, **fields: object) -> dict:
    req = ProfileSaveRequest(caller=caller, profile_id=profile_id, profile=ProfileInput.model_validate(fields))
    return await rpc(nc, ProfileSaveRequest.SUBJECT, req)


async def test_edit_keeps_omitted_fields_validates_like_create_and_applies(
    nats_url, database_url, service_env, start_service
):
    await start_service("catalog", service_env(database_url=database_url))
    nc = await nats.connect(nats_url)
    try:
        made = await save(nc, ALICE, None, name="mine", type="primary", model_name="qwen3:8b",
                          parameters={"temperature": 0.1}, system_prompt="be brief")  # fmt: skip
        pid = uuid.UUID(made["id"])
        edited = await save(nc, ALICE, pid, parameters={"temperature": 0.5, "num_ctx": 8192}, description="edited")
        assert (edited["id"], edited["name"], edited["model_name"], edited["system_prompt"]) == (
            made["id"], "mine", "qwen3:8b", "be brief"
        )  # fmt: skip
        assert edited["parameters"] == {"temperature": 0.5, "num_ctx": 8192} and edited["description"] == "edited"
        stored = await rpc(nc, ProfileGetRequest.SUBJECT, ProfileGetRequest(caller=ALICE, profile_id=pid))
        assert stored["parameters"] == edited["parameters"]
        resolved = await rpc(nc, ResolveRequest.SUBJECT, ResolveRequest(profile_id=pid, user_id="alice"))
        assert resolved.get("parameters", {}).get("temperature") == 0.5, resolved

        for caller, fields, status, field in [
            (ALICE, {"parameters": {"temperature": 9}}, 422, "parameters.temperature"),
            (ALICE, {"parameters": {"no_such_knob": 1}}, 422, "parameters.no_such_knob"),
            (ALICE, {"type": "nope"}, 422, "type"),
            (BOB, {"description": "not mine"}, 403, None),
            (ADMIN, {"type": "engineering"}, None, None),  # the admin may edit anyone's
        ]:
            reply = await save(nc, caller, pid, **fields)
            if status is None:
                assert "error" not in reply and reply["type_name"] == "engineering", reply
                continue
            error = reply["error"]
            assert error["status"] == status, (fields, error)
            if field:
                assert error["field"] == field, (fields, error)
        default = system_profile_id(1)
        assert (await save(nc, ALICE, default, description="x"))["error"]["status"] == 403
        assert (await save(nc, ADMIN, default, type="engineering"))["error"]["status"] == 409
        missing = await save(nc, ADMIN, uuid.uuid4(), description="x")
        assert (missing["error"]["status"], missing["error"]["field"]) == (404, "profile_id")
        after = await rpc(nc, ProfileGetRequest.SUBJECT, ProfileGetRequest(caller=ALICE, profile_id=pid))
        assert after["parameters"] == {"temperature": 0.5, "num_ctx": 8192}, "a refused edit changes nothing"
    finally:
        await nc.close()
