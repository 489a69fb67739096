"""Provisioning the active profile set's roles with the real catalog process answering rpc.catalog.roles.v1."""

from __future__ import annotations

import json

import nats
import pytest

from contracts.catalog import RolesReply, RolesRequest
from contracts.model_ref import parse_model_ref
from tests.harness.provision_bus import Bus, provisioner_env
from tests.peers.hub_server import HubPeer
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.e2e


async def test_all_roles_of_the_active_set_provisioned_through_the_catalog(
    nats_url, service_env, database_url, tmp_path, start_service
):
    await start_service("catalog", service_env(database_url=database_url))
    nc = await nats.connect(nats_url)
    try:
        reply = await nc.request(RolesRequest.SUBJECT, RolesRequest().model_dump_json().encode(), timeout=10)
        roles = RolesReply.model_validate(json.loads(reply.data))
    finally:
        await nc.close()
    assert roles.roles, "the catalog's active profile set has roles"
    pullable = [
        e for e in roles.roles if e.provider == "ollama" and parse_model_ref(e.model_ref).provision == "ollama_pull"
    ]
    library = [library_model(e.model_ref, 1 << 20) for e in pullable]
    bus = await Bus().start(nats_url)
    with OllamaPeer(library=library) as ollama, HubPeer() as hub:
        try:
            env = provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
            await start_service("provisioner", env)
            done = await bus.completed((await bus.provision(requested_by="ci")).request_id, timeout_s=60)
            by_role = {a.role: a for a in done.actions}
            assert set(by_role) == {e.role for e in roles.roles}
            for e in roles.roles:
                expected = "pulled" if e in pullable and e.auto_download else "skipped"
                assert by_role[e.role].action == expected, (e, by_role[e.role])
            one = pullable[0].role
            again = await bus.completed((await bus.provision(roles=[one])).request_id)
            assert [(a.role, a.action) for a in again.actions] == [(one, "present")]
        finally:
            await bus.close()
