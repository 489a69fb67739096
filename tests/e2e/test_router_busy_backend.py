"""A busy backend is not a dead one: llama-cpp-python's server answers nothing else while it generates, so the
router's active checks time out for the whole of a long streamed answer. Catalog, router and gateway processes,
real NATS and PostgreSQL, a real llama.cpp server; the role must stay healthy and the next request be served."""

from __future__ import annotations

import json
from typing import Any

import httpx
import nats
import openai
import pytest

from contracts.hardware import BackendLoadedModel, BackendStatus
from contracts.router import BackendChecked, BackendsRequest
from tests.harness.cli import ADMIN_TOKEN
from tests.harness.fleet_events import gpu_sample, publish
from tests.harness.llama_server import llama_server
from tests.harness.waiting import eventually

pytestmark = pytest.mark.e2e

#: checks every 0.3 s that give up after 0.2 s: a few hundred tokens span many check slots
CHECKS = {"MODELFLEET_ROUTER_CHECK_TIMEOUT_S": "0.2", "MODELFLEET_ROUTER_CHECK_INTERVAL_S": "0.3"}
ALLOWED_FAILS = 3  # the router's default: this many timeouts in the window would open the circuit


async def role_state(nc: Any, role: str) -> str | None:
    reply = json.loads((await nc.request(BackendsRequest.SUBJECT, b"{}", timeout=5)).data)
    return next((r["state"] for r in reply.get("roles", []) if r["role"] == role), None)


async def test_check_timeouts_during_a_long_answer_do_not_degrade_the_role(
    nats_url, database_url, service_env, start_service, start_gateway, tmp_path
):
    with llama_server(log=tmp_path / "llama.log") as (base_url, model_id):
        env = service_env(database_url=database_url, MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN)
        await start_service("catalog", env)
        await start_service("router", service_env(**CHECKS))
        url = await start_gateway(env)
        nc = await nats.connect(nats_url)
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ADMIN_TOKEN, max_retries=0, timeout=120)
        try:
            manifest = {"profiles": {"default": {"models": {"coding": {"name": model_id, "provider": "openai"}}}}}
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                imported = await http.post("/api/v1/catalog/import", params={"filename": "m.json"},
                                           content=json.dumps(manifest), headers={"Authorization":
                                           f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
                assert imported.status_code == 200, imported.text
            served = BackendStatus(kind="openai", base_url=base_url, reachable=True,
                                   loaded=[BackendLoadedModel(name=model_id)])  # fmt: skip
            update = {"ollama_url": None, "ollama_reachable": False, "backends": [served]}
            await publish(nc.jetstream(), gpu_sample("c-llama", "").model_copy(update=update))

            async def routed() -> bool:
                done = await client.chat.completions.create(
                    model="coding", messages=[{"role": "user", "content": "hi"}], max_tokens=1
                )
                return bool(done.choices)

            await eventually(routed, 30, "the coding role routed to the llama.cpp server")
            # the role must be seen healthy first: a role never healthy is `unserved` and could not degrade
            await eventually(lambda: _is(nc, "coding", "healthy"), 30, "the coding role healthy")

            transitions = await nc.subscribe("evt.router.llm.>")
            checks = await nc.subscribe(BackendChecked.SUBJECT)
            stream = await client.chat.completions.create(
                model="coding", stream=True, max_tokens=400, temperature=0.0,
                messages=[{"role": "user", "content": "Count from 1 to 300, one number per line."}],
            )  # fmt: skip
            pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            assert "".join(pieces).strip()

            timeouts = 0
            while True:  # what the router checked while the answer was generated (already delivered, or close)
                try:
                    msg = await checks.next_msg(timeout=0.5)
                except nats.errors.TimeoutError:
                    break
                timeouts += BackendChecked.model_validate_json(msg.data).outcome == "timeout"
            # the precondition that makes the test mean something: enough checks timed out to trip an idle backend
            assert timeouts >= ALLOWED_FAILS, f"only {timeouts} checks timed out: the answer was too short"
            degraded = []
            while True:
                try:
                    degraded.append((await transitions.next_msg(timeout=0.2)).subject)
                except nats.errors.TimeoutError:
                    break
            print(f"{timeouts} checks timed out during the answer; transitions published: {degraded}")
            assert degraded == []
            assert await role_state(nc, "coding") == "healthy"

            after = await client.chat.completions.with_raw_response.create(
                model="coding", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
            )
            assert after.http_response.status_code == 200
            assert after.headers["x-modelfleet-backend"] == f"c-llama {base_url}"
        finally:
            await client.close()
            await nc.close()


async def _is(nc: Any, role: str, state: str) -> bool:
    return await role_state(nc, role) == state
