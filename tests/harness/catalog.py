"""What the catalog tests share: the catalog and gateway as processes, bearer headers, the replicas on the bus."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import nats

from tests.harness.cli import ADMIN_TOKEN


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@asynccontextmanager
async def catalog_fleet(
    database_url: str, service_env: Callable[..., dict[str, str]], start_service: Any, start_gateway: Any, **env_: str
) -> AsyncIterator[httpx.AsyncClient]:
    """A catalog and a gateway process with the admin token `ADMIN_TOKEN` (and `env_` added to both's environment);
    yields an HTTP client to the gateway."""
    env = service_env(database_url=database_url, MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN, **env_)
    await start_service("catalog", env)
    url = await start_gateway(env)
    async with httpx.AsyncClient(base_url=url, timeout=15) as client:
        yield client


async def healthy_instances(nc: Any, service: str = "catalog") -> set[str]:
    """Instance ids of every replica of `service` that answers its health subject within 0.3 s."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(f"rpc.{service}.health.v1", b"{}", reply=inbox)
    seen: set[str] = set()
    try:
        while True:
            reply = json.loads((await sub.next_msg(timeout=0.3)).data)
            if reply.get("healthy"):
                seen.add(reply["instance_id"])
    except nats.errors.TimeoutError:
        return seen
    finally:
        await sub.unsubscribe()
