"""`wait: true` with no provisioner running: refused at once, and nothing is left queued to run later."""

from __future__ import annotations

import asyncio

import httpx
import nats
import pytest

pytestmark = pytest.mark.e2e
TOKEN = "no-provisioner-admin"


async def test_wait_without_a_provisioner_is_refused_and_submits_nothing(nats_url, service_env, start_gateway):
    url = await start_gateway(service_env(MODELFLEET_ADMIN_TOKEN=TOKEN))
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
        for _ in range(50):  # the gateway connects to NATS in the background
            r = await http.post("/api/v1/models/provision", json={"models": ["qwen3:8b"], "wait": True})
            if "not connected" not in r.text:
                break
            await asyncio.sleep(0.1)
        assert r.status_code == 503, r.text
        assert "no healthy provisioner" in r.json()["detail"]
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info("COMMANDS")
        assert info.state.messages == 0
    finally:
        await nc.close()
