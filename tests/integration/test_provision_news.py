"""A model on its host that the inventory lacks is news (issue 11): the first request to find it writes the row and
tells the fleet once (`model.pulled`), however many requests find it at the same time. The provisioner process
against real NATS + PostgreSQL and the Ollama peer."""

from __future__ import annotations

import asyncio

import pytest

from services.provisioner.store import SCHEMA
from tests.harness.provision_bus import db_rows, provisioner_env
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.integration

MODEL = "installed-by-hand:1b"


async def test_concurrent_requests_for_a_model_the_inventory_lacks_tell_it_once(
    bus, service_env, database_url, tmp_path, start_service
) -> None:
    with OllamaPeer() as ollama:
        ollama.install(MODEL, size=4096)  # put there outside the fleet: no inventory row, no model.pulled yet
        env = provisioner_env(service_env, database_url, tmp_path, "http://127.0.0.1:9", {"gpu-1": ollama.url})
        await start_service("provisioner", env)

        # Four at once (the job limit is 4): each finds the model on the host and no row.
        commands = [await bus.provision(models=[MODEL], hosts=["gpu-1"]) for _ in range(4)]
        done = await asyncio.gather(*(bus.completed(c.request_id) for c in commands))

        # None of them downloaded it: each reports `present`; the fleet hears of it once, under one request's id.
        assert [[a.action for a in d.actions] for d in done] == [["present"]] * 4
        pulled = {e["event_id"]: e for s, e, _ in bus.events if s.endswith(".model.pulled.v1")}
        assert [(e["target_host"], e["model"]) for e in pulled.values()] == [("gpu-1", MODEL)], pulled
        assert {e["request_id"] for e in pulled.values()} <= {str(c.request_id) for c in commands}
        rows = await db_rows(database_url, f"SELECT host, ollama_name, size_bytes, source FROM {SCHEMA}.inventory")
        assert rows == [{"host": "gpu-1", "ollama_name": MODEL, "size_bytes": 4096, "source": "curated"}], rows
        audit = await db_rows(database_url, f"SELECT action, model FROM {SCHEMA}.audit WHERE result = 'ok'")
        assert [a["action"] for a in audit] == ["adopt"], audit
        assert ollama.calls["POST /api/pull"] == 0
