"""The catalog process against real NATS and PostgreSQL: first-start library, resolve and roles over the bus, events."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import nats
import pytest

from contracts.catalog import (
    Caller,
    ImportRequest,
    ProfileInput,
    ProfileSaveRequest,
    ResolveRequest,
    RolesRequest,
    system_profile_id,
)
from contracts.subjects import EVENTS_STREAM
from tests.harness.catalog import healthy_instances

pytestmark = pytest.mark.integration

ADMIN = Caller(user_id="admin", admin=True)


async def rpc(nc, subject: str, body: dict | object) -> dict:
    payload = body.model_dump(mode="json") if hasattr(body, "model_dump") else body
    return json.loads((await nc.request(subject, json.dumps(payload).encode(), timeout=10)).data)


async def collect(js, subject: str, want: int, timeout_s: float = 10.0) -> list[dict]:
    sub = await js.subscribe(subject, stream=EVENTS_STREAM, ordered_consumer=True)
    got: list[dict] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(got) < want:
                got.append(json.loads((await sub.next_msg(timeout=timeout_s)).data))
    finally:
        await sub.unsubscribe()
    return got


async def test_first_start_loads_library_and_resolves_over_the_bus(nats_url, database_url, service_env, start_service):
    await start_service("catalog", service_env(database_url=database_url))
    nc = await nats.connect(nats_url)
    try:
        models = (await rpc(nc, "rpc.catalog.models.list.v1", {}))["models"]
        assert len(models) >= 20
        assert {"qwen3-30b-a3b", "qwen3-coder-30b-a3b", "nomic-embed-text", "flux.1-dev"} <= {m["id"] for m in models}

        listed = await rpc(nc, "rpc.catalog.profiles.list.v1", {"caller": ADMIN.model_dump()})
        defaults = {p["type"]: p for p in listed["profiles"] if p["system_default"]}
        assert sorted(defaults) == list(range(1, 20))
        assert all(uuid.UUID(p["id"]) == system_profile_id(n) for n, p in defaults.items())
        assert defaults[1]["id"] == "00000000-0000-0000-0000-000000000001"
        assert set(defaults[1]["parameters"]) >= {"num_ctx", "temperature", "top_p", "top_k", "min_p", "seed", "stop"}

        general = await rpc(nc, ResolveRequest.SUBJECT, ResolveRequest(role="general", options={"temperature": 1.5}))
        assert general["model_ref"] == "qwen3:30b-a3b" and general["provider"] == "ollama"
        assert general["parameters"]["temperature"] == 1.5  # request options win
        assert general["parameters"]["num_ctx"] == 40960  # from the model's defaults
        assert general["system_prompt"]  # the primary type's default prompt
        assert "qwen3:14b" in general["fallback_chain"]

        by_id = await rpc(nc, ResolveRequest.SUBJECT, {"profile_id": str(system_profile_id(18))})
        assert by_id["model_ref"] == "qwen3-coder:30b" and by_id["parameters"]["num_ctx"] == 65536
        by_model = await rpc(nc, ResolveRequest.SUBJECT, {"model": "hf.co/bartowski/Some-Model-GGUF:q5_k_m"})
        assert by_model["model_ref"] == "hf.co/bartowski/Some-Model-GGUF:Q5_K_M"

        # Refusals are the seam's typed error reply: header Mf-Rpc: error, {"error": {status, code, detail, field}}.
        bad = await rpc(nc, ResolveRequest.SUBJECT, {"role": "general", "model": "qwen3:8b"})
        assert bad["error"]["status"] == 422 and "exactly one" in bad["error"]["detail"]
        assert bad["error"]["code"] == "invalid_request"
        out_of_range = await rpc(nc, ResolveRequest.SUBJECT, {"role": "general", "options": {"top_p": 3}})
        assert out_of_range["error"]["status"] == 422 and "top_p" in out_of_range["error"]["detail"]
        assert out_of_range["error"]["field"] == "options.top_p"
        garbage = await nc.request(ResolveRequest.SUBJECT, b"\xffnot json", timeout=10)
        assert garbage.headers == {"Mf-Rpc": "error"}
        assert json.loads(garbage.data)["error"]["status"] == 422
        unknown = await rpc(nc, ResolveRequest.SUBJECT, {"role": "astrology"})
        assert unknown["error"]["status"] == 404 and "astrology" in unknown["error"]["detail"]
        assert (unknown["error"]["code"], unknown["error"]["field"]) == ("not_found", "role")

        roles = await rpc(nc, RolesRequest.SUBJECT, RolesRequest())
        assert roles["profile_set"] == "default"
        assert {r["role"] for r in roles["roles"]} >= {"general", "coding", "embedding"}
    finally:
        await nc.close()


async def test_active_set_from_llm_models_profile_and_events_through_the_outbox(
    nats_url, database_url, service_env, start_service
):
    env = service_env(database_url=database_url, LLM_MODELS_PROFILE="lab")
    await start_service("catalog", env)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        registered = await collect(js, "evt.catalog.model.registered.v1", 20)
        assert {e["model_id"] for e in registered} >= {"qwen3-30b-a3b", "llama3.2-3b"}
        manifest = {"profiles": {"lab": {"models": {"general": "qwen3:8b", "coding": {"name": "qwen3-coder:30b"}}}}}
        reply = await rpc(
            nc, ImportRequest.SUBJECT, ImportRequest(caller=ADMIN, filename="llm.json", content=json.dumps(manifest))
        )
        assert reply["profile_sets"] == ["lab"]
        roles = await rpc(nc, RolesRequest.SUBJECT, {})
        assert roles["profile_set"] == "lab" and [r["model_ref"] for r in roles["roles"]] == [
            "qwen3:8b",
            "qwen3-coder:30b",
        ]

        saved = await rpc(nc, ProfileSaveRequest.SUBJECT, ProfileSaveRequest(
            caller=Caller(user_id="alice"),
            profile=ProfileInput(name="mine", type="primary", model_name="qwen3:8b", parameters={"temperature": 0.1}),
        ))  # fmt: skip
        changed = await collect(js, "evt.catalog.profile.changed.v1", 20)
        mine = [e for e in changed if e["profile_id"] == saved["id"]]
        assert mine and mine[0]["change"] == "created" and mine[0]["owner_id"] == "alice"
        assert mine[0]["producer"] == "catalog"
    finally:
        await nc.close()


async def test_a_change_through_one_replica_reaches_the_other_replicas_cache(
    nats_url, database_url, service_env, start_service
):
    env = service_env(database_url=database_url)
    await start_service("catalog", env)
    await start_service("catalog", env)
    nc = await nats.connect(nats_url)
    try:
        deadline = time.monotonic() + 30  # the harness's health wait may have been answered by the first replica
        while len(await healthy_instances(nc)) < 2:
            assert time.monotonic() < deadline, "the second replica never answered its health subject"
            await asyncio.sleep(0.1)
        saved = await rpc(nc, ProfileSaveRequest.SUBJECT, ProfileSaveRequest(
            caller=ADMIN, profile=ProfileInput(name="shared", type=9, model_name="qwen3:14b", parameters={"top_k": 7}),
        ))  # fmt: skip
        resolve = ResolveRequest(profile_id=uuid.UUID(saved["id"]))
        # The queue group spreads requests over both replicas: 40 answers in a row must all know the profile.
        answers: list[dict] = []
        deadline = time.monotonic() + 10
        while len(answers) < 40:
            assert time.monotonic() < deadline, "a replica kept answering from a stale view"
            got = await rpc(nc, ResolveRequest.SUBJECT, resolve)
            answers = [*answers, got] if "error" not in got else []
        assert {a["model_ref"] for a in answers} == {"qwen3:14b"} and {a["parameters"]["top_k"] for a in answers} == {7}
    finally:
        await nc.close()
